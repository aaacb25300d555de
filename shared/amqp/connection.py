"""Connect to RabbitMQ, failing over across a list of broker URLs.

billq does its own reconnect loop instead of aio-pika's robust connection, whose
consumer restoration is known to fail silently after a broker restart; every
(re)connection redeclares topology and restarts consumers explicitly.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import aio_pika
import structlog
from aio_pika.abc import AbstractConnection

from shared.errors import BrokerRefused, BrokerUnavailable, ConfigError

log = structlog.get_logger("billq.amqp")


def safe_url(url: str) -> str:
    """host:port/vhost, without credentials, for logs and errors."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5672}{parts.path or '/'}"


def _vhost(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


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
        BrokerRefused: a broker answered but would not open the virtual host.
        BrokerUnavailable: none answered.
    """
    last: BaseException | None = None
    refused: list[str] = []
    for url in urls:
        try:
            return await aio_pika.connect(url, timeout=timeout)
        except aio_pika.exceptions.ProbableAuthenticationError:
            raise ConfigError(f"BILLQ_AMQP_URL: {safe_url(url)} refused the credentials") from None
        except aio_pika.exceptions.InvalidFrameError as exc:
            # The broker spoke AMQP, then answered the Connection.Open of the URL's virtual
            # host with Connection.Close (530 NOT_ALLOWED): the vhost does not exist or this
            # user has no permission on it. Another node may still answer: try the rest first.
            refused.append(url)
            last = exc
        except Exception as exc:
            # Any failure to open the connection means "not this broker, not now" — a peer
            # that closes the socket at once even surfaces as StopAsyncIteration from aiormq.
            last = exc
    if refused and len(refused) == len(urls):
        raise BrokerRefused(
            f"BILLQ_AMQP_URL: {safe_url(refused[0])} would not open the virtual host "
            f"{_vhost(refused[0])!r}: it does not exist or the user is not permitted on it"
        )
    raise BrokerUnavailable(
        "BILLQ_AMQP_URL: no broker answered at "
        + ", ".join(safe_url(u) for u in urls)
        + (f" ({type(last).__name__})" if last else "")
    )


async def connect_with_retry(
    urls: Sequence[str], *, stop: asyncio.Event, max_backoff: float = 5.0
) -> AbstractConnection | None:
    """Keep trying every URL with capped backoff until connected or ``stop`` is set.

    A refused virtual host is waited for too (it may be being created, or a node may be
    starting); every failed attempt logs ``broker.waiting`` at warning level with what it
    waits for, so an unreachable broker is never silent.
    """
    for attempt in itertools.count(1):
        try:
            conn = await connect_any(urls)
        except (BrokerUnavailable, BrokerRefused) as exc:
            delay = min(max_backoff, 0.25 * 2 ** min(attempt - 1, 16))
            log.warning(
                "broker.waiting",
                brokers=[safe_url(u) for u in urls],
                reason=str(exc),
                attempt=attempt,
                retry_in_s=delay,
            )
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return None
            except TimeoutError:
                continue
        if attempt > 1:
            log.info("broker.connected", after_attempts=attempt)
        return conn
    return None  # pragma: no cover - itertools.count never ends
