"""Classify Postgres failures by exception class, never by message text."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import asyncpg

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
    if setting is not None and isinstance(exc, _BAD_URL):
        # The driver's text names the parameter; it never contains the password.
        return ConfigError(f"{where}refused by the database client or server: {exc}")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ConfigError(f"{where}database does not exist (run `billq migrate`)")
    if isinstance(
        exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
    ):
        return ConfigError(f"{where}authentication refused")
    if isinstance(exc, asyncpg.UndefinedTableError):
        return ConfigError(f"{where}schema missing (run `billq migrate`)")
    if is_transient(exc):
        return DatabaseUnavailable(f"{where}database unavailable ({type(exc).__name__})")
    return exc


P = ParamSpec("P")
T = TypeVar("T")


def classified(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
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
