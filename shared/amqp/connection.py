"""Connect to RabbitMQ, failing over across a list of broker URLs.

billq does its own reconnect loop instead of aio-pika's robust connection, whose
consumer restoration is known to fail silently after a broker restart; every
(re)connection redeclares topology and restarts consumers explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractConnection

from shared.backoff import Backoff
from shared.errors import BrokerUnavailable, ConfigError


def safe_url(url: str) -> str:
    """host:port/vhost, without credentials, for logs and errors."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5672}{parts.path or '/'}"


def broker_lost(exc: BaseException) -> bool:
    """Whether a failure means "this broker connection is gone" (try another node)."""
    if isinstance(exc, BrokerUnavailable):
        return True
    if isinstance(
        exc, aio_pika.exceptions.AMQPError | ConnectionError | asyncio.IncompleteReadError
    ):
        return not isinstance(exc, aio_pika.exceptions.ProbableAuthenticationError)
    # aio-pika reports work on a connection that died under it as RuntimeError("... closed").
    return isinstance(exc, RuntimeError) and str(exc).endswith("closed")


async def connect_any(urls: Sequence[str], *, timeout: float = 10.0) -> AbstractConnection:
    """Connect to the first broker that answers, in order.

    Raises:
        ConfigError: credentials refused.
        BrokerUnavailable: none answered.
    """
    last: BaseException | None = None
    for url in urls:
        try:
            return await aio_pika.connect(url, timeout=timeout)
        except aio_pika.exceptions.ProbableAuthenticationError:
            raise ConfigError(f"BILLQ_AMQP_URL: {safe_url(url)} refused the credentials") from None
        except Exception as exc:
            # Any failure to open the connection means "not this broker, not now" — a peer
            # that closes the socket at once even surfaces as StopAsyncIteration from aiormq.
            last = exc
    raise BrokerUnavailable(
        "BILLQ_AMQP_URL: no broker answered at "
        + ", ".join(safe_url(u) for u in urls)
        + (f" ({type(last).__name__})" if last else "")
    )


async def connect_with_retry(
    urls: Sequence[str], *, stop: asyncio.Event, backoff: Backoff | None = None
) -> AbstractConnection | None:
    """Keep trying every URL, with jittered capped backoff, until connected or ``stop`` is set.

    Raises:
        ConfigError: credentials refused (retrying cannot help).
    """
    backoff = backoff or Backoff()
    while not stop.is_set():
        try:
            return await connect_any(urls)
        except BrokerUnavailable:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff.next())
    return None
