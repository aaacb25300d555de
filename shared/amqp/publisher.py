"""Publish with confirms, mandatory routing and a timeout; replace a nacking channel.

After a cluster failover a channel that published during leader election can be
nacked for every later publish while it lives: on a nack the channel is closed, a
fresh one opened, and the message republished.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import ChannelInvalidStateError, DeliveryError, PublishError
from pamqp.commands import Basic

from shared.errors import PublishFailed, Unroutable

BasicProperties = Basic.Properties


class Publisher:
    """A confirming publisher on its own channel."""

    def __init__(self, connection: AbstractConnection, *, timeout: float, max_nacks: int = 3):
        self._connection = connection
        self._timeout = timeout
        self._max_nacks = max_nacks
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._lock = asyncio.Lock()

    async def _exchange(self, name: str) -> AbstractExchange:
        if self._channel is None or self._channel.is_closed:
            async with self._lock:
                if self._channel is None or self._channel.is_closed:
                    self._channel = await self._connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    self._exchanges.clear()
        exchange = self._exchanges.get(name)
        if exchange is None:
            assert self._channel is not None
            exchange = (
                self._channel.default_exchange
                if name == ""
                else await self._channel.get_exchange(name, ensure=False)
            )
            self._exchanges[name] = exchange
        return exchange

    async def _replace_channel(self, nacked: AbstractChannel | None) -> None:
        async with self._lock:
            if self._channel is nacked and self._channel is not None:
                channel, self._channel = self._channel, None
                self._exchanges.clear()
                if not channel.is_closed:
                    await channel.close()

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        message_type: str | None = None,
        headers: Mapping[str, Any] | None = None,
        expiration_s: float | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Publish one persistent message and wait for its confirm.

        Raises:
            PublishFailed: no confirm within the timeout, or the broker kept nacking.
            Unroutable: the broker returned the message.
        """
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type=content_type,
            message_id=message_id,
            type=message_type,
            timestamp=dt.datetime.now(dt.UTC),
            headers=dict(headers or {}),
            expiration=expiration_s,
        )

        async def send(ex: AbstractExchange, channel: AbstractChannel) -> None:
            await ex.publish(message, routing_key=routing_key, mandatory=True)

        await self._until_confirmed(exchange, routing_key, send)

    async def publish_many(
        self,
        exchange: str,
        routing_key: str,
        items: Sequence[tuple[bytes, str, Mapping[str, Any] | None]],
        *,
        message_type: str | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Publish (body, message_id, headers) items as one confirm window.

        The hot path of the distributor: frames go straight to the channel (no per-message
        wrapper objects or drains); one deadline covers the window. A nacked window is
        republished on a fresh channel (duplicates are harmless: jobs are claimed once).

        Raises:
            PublishFailed: no confirm within the timeout, or the broker kept nacking.
            Unroutable: the broker returned a message.
        """
        stamp = dt.datetime.now(dt.UTC)

        async def send(ex: AbstractExchange, channel: AbstractChannel) -> None:
            underlay = await channel.get_underlay_channel()
            await asyncio.gather(
                *(
                    underlay.basic_publish(  # type: ignore[call-arg]  # ABC lags: no wait=
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        mandatory=True,
                        wait=False,
                        properties=BasicProperties(
                            delivery_mode=2,
                            content_type=content_type,
                            message_id=message_id,
                            message_type=message_type,
                            timestamp=stamp,
                            headers=dict(headers) if headers else None,
                        ),
                    )
                    for body, message_id, headers in items
                )
            )

        await self._until_confirmed(exchange, routing_key, send)

    async def _until_confirmed(
        self,
        exchange: str,
        routing_key: str,
        send: Callable[[AbstractExchange, AbstractChannel], Awaitable[None]],
    ) -> None:
        """Run ``send`` until the broker confirms all it sent, within the timeout.

        The one ladder for every publish: a nack or a silent channel is retried on a fresh
        channel, up to ``max_nacks`` channels; a return or a lost connection ends it.

        Raises:
            PublishFailed: no confirm within the timeout, or the broker kept nacking.
            Unroutable: the broker returned a message.
        """
        timeouts = 0
        for _ in range(self._max_nacks):
            ex = await self._exchange(exchange)  # opens the channel if needed
            channel = self._channel
            assert channel is not None
            try:
                async with asyncio.timeout(self._timeout):
                    await send(ex, channel)
                return
            except PublishError:
                raise Unroutable(f"unroutable: exchange {exchange!r} key {routing_key!r}") from None
            except DeliveryError:
                await self._replace_channel(channel)
            except TimeoutError:
                # A channel that published while a quorum queue had no leader (a broker
                # restart, a failover) can stay silent: retry on a fresh channel.
                await self._replace_channel(channel)
                timeouts += 1
            except (
                aio_pika.exceptions.AMQPError,
                ChannelInvalidStateError,
                ConnectionError,
            ) as exc:
                raise PublishFailed(f"broker connection lost ({type(exc).__name__})") from None
        if timeouts:
            raise PublishFailed(f"no confirm within {self._timeout:g}s, {timeouts} channel(s)")
        raise PublishFailed(f"broker nacked the publish {self._max_nacks} times")

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
