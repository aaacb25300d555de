"""Connect to RabbitMQ, failing over across a list of broker URLs.

billq does its own reconnect loop instead of aio-pika's robust connection, whose
consumer restoration is known to fail silently after a broker restart; every
(re)connection redeclares topology and restarts consumers explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import aio_pika
import structlog
from aio_pika.abc import AbstractConnection

from shared.backoff import Backoff
from shared.errors import BrokerRefused, BrokerUnavailable, ConfigError

log = structlog.get_logger("billq.amqp")


def safe_url(url: str) -> str:
    """host:port/vhost, without credentials, for logs and errors."""
    parts = urlsplit(url)
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    return f"{parts.hostname}:{port}{parts.path or '/'}"


# A handshake that ends in one of these may be a broker going away mid-handshake; every
# other TLS failure (unknown CA, wrong host name, certificate required) is configuration.
_TLS_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def tls_refusal(exc: BaseException) -> ssl.SSLError | None:
    """The TLS failure behind a failed connection when retrying cannot fix it.

    aiormq wraps the ``ssl`` error in ``AMQPConnectionError``: keep it as the cause or in
    the arguments, so look in both.
    """
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        err = todo.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ssl.SSLError) and not isinstance(err, _TLS_TRANSIENT):
            return err
        todo.extend([err.__cause__, err.__context__, *err.args])
    return None


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


def tls_reason(err: ssl.SSLError) -> str:
    """``CERTIFICATE_VERIFY_FAILED (Hostname mismatch, …)``: OpenSSL's reason code and, for
    a certificate check, what was wrong with the certificate."""
    detail = getattr(err, "verify_message", None)
    reason = err.reason or type(err).__name__
    return f"{reason} ({detail})" if detail else str(reason)


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
            if (refusal := tls_refusal(exc)) is not None:
                # Never retried, never another node: a certificate does not fix itself.
                raise ConfigError(
                    f"BILLQ_AMQP_URL: TLS with {safe_url(url)} failed: {tls_reason(refusal)}"
                ) from None
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
    urls: Sequence[str], *, stop: asyncio.Event, backoff: Backoff | None = None
) -> AbstractConnection | None:
    """Keep trying every URL, with jittered capped backoff, until connected or ``stop`` is set.

    A refused virtual host is waited for too (it may be being created, or a node may be
    starting); every failed attempt logs ``broker.waiting`` at warning level with what it
    waits for, so an unreachable broker is never silent.

    Raises:
        ConfigError: credentials or TLS refused (retrying cannot help).
    """
    backoff = backoff or Backoff()
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            conn = await connect_any(urls)
        except (BrokerUnavailable, BrokerRefused) as exc:
            delay = backoff.next()
            log.warning(
                "broker.waiting",
                brokers=[safe_url(u) for u in urls],
                reason=str(exc),
                attempt=attempt,
                retry_in_s=round(delay, 2),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            continue
        if attempt > 1:
            log.info("broker.connected", after_attempts=attempt)
        return conn
    return None
