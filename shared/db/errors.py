"""Classify Postgres failures by exception class, never by message text."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import asyncpg

from shared.backoff import Backoff
from shared.errors import BillqError, ConfigError, DatabaseUnavailable

# InterfaceError is left out on purpose: it is client misuse (a released connection, an
# operation already in progress), which retrying cannot fix. A lost connection raises
# ConnectionDoesNotExistError, a PostgresConnectionError.
_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,
    asyncpg.exceptions.ConnectionFailureError,
    # Several hosts with target_session_attrs=read-write, none a primary yet: a standby is
    # being promoted.
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT)


# Raised while connecting, these mean the URL itself is wrong: asyncpg checks some URL
# parameters on the client (sslmode, target_session_attrs, ports) and passes every other one to
# the server as a run-time setting, which refuses unknown names or bad values.
_BAD_URL: tuple[type[BaseException], ...] = (
    asyncpg.ClientConfigurationError,
    asyncpg.UndefinedObjectError,
    asyncpg.InvalidParameterValueError,
    asyncpg.CantChangeRuntimeParamError,
    ValueError,
    OverflowError,
)


def classify(exc: BaseException, *, setting: str | None = None) -> BaseException:
    """Map a driver exception to the billq tree; unknown ones pass through unchanged.

    ``setting`` names the URL setting when the error comes from opening a connection.
    """
    if isinstance(exc, BillqError):
        return exc
    where = f"{setting}: " if setting else ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        # Before the transient check (it is an OSError): a wrong CA or host name never heals.
        reason = exc.verify_message or exc.reason
        return ConfigError(f"{where}TLS certificate verification failed ({reason})")
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return ConfigError(f"{where}{exc}")
    if isinstance(exc, FileNotFoundError):
        # Only opening a connection reads files: the ones the URL's TLS parameters name.
        return ConfigError(f"{where}a file named by sslrootcert, sslcert or sslkey is missing")
    if setting is not None and isinstance(exc, _BAD_URL):
        # The driver's text names the parameter; it never contains the password.
        return ConfigError(f"{where}refused by the database client or server: {exc}")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ConfigError(f"{where}database does not exist (run `billq migrate`)")
    if isinstance(
        exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
    ):
        # The server's reason (pg_hba line, client certificate required) names no secret.
        return ConfigError(f"{where}authentication refused ({exc})")
    if isinstance(exc, asyncpg.UndefinedTableError):
        return ConfigError(f"{where}schema missing (run `billq migrate`)")
    if is_transient(exc):
        return DatabaseUnavailable(f"{where}database unavailable ({type(exc).__name__})")
    return exc


P = ParamSpec("P")
T = TypeVar("T")

# Postgres aborted the statement to break a lock cycle or a serialization conflict: the
# same statement, run again a moment later, normally goes through.
_CONFLICT: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)
CONFLICT_TRIES = 5


def retried_on_conflict(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run a statement again after a deadlock or serialization failure, a few times with
    jittered backoff; then raise ``DatabaseUnavailable`` with one clear line. Only for
    statements that are safe to repeat (each call is its own transaction)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        backoff = Backoff(base=0.05, cap=1.0, floor=0.01)
        for attempt in range(1, CONFLICT_TRIES + 1):
            try:
                return await fn(*args, **kwargs)
            except _CONFLICT as exc:
                if attempt == CONFLICT_TRIES:
                    raise DatabaseUnavailable(
                        f"{fn.__name__}: Postgres aborted it {CONFLICT_TRIES} times in a row "
                        f"({type(exc).__name__}); another process keeps locking the same rows"
                    ) from exc
                await asyncio.sleep(backoff.next())
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


def classified(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Repository methods raise the billq tree: callers catch ``TransientError``, not drivers'
    classes. An unclassified driver error (a bug) passes through unchanged."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except BillqError:
            raise
        except Exception as exc:
            err = classify(exc)
            if err is exc:
                raise
            raise err from exc

    return wrapper
