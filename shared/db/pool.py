"""asyncpg pool creation with billq's connection conventions."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from shared.config import Settings
from shared.db.errors import classify

# A connection of its own or one acquired from a pool (statements that run in a caller's
# transaction take either).
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


async def _no_reset(_: Any) -> None:
    # The default reset runs several statements per release; billq never leaves
    # session state behind, so skipping it saves a round trip per transaction.
    return None


# Every billq statement is short OLTP. Where a plan's estimate is high (a table without
# statistics mid-run), Postgres' JIT compiled the statement first: ~1 s per group commit on
# a 1,000,000-job table, several times the statement itself (measured). Off per connection.
SERVER_SETTINGS = {"jit": "off"}


async def create_pool(settings: Settings, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open a pool; an unreachable database raises a classified, secret-free error.

    Raises:
        DatabaseUnavailable: Postgres does not answer.
        ConfigError: the database does not exist or refuses the credentials.
    """
    try:
        pool = await asyncpg.create_pool(
            settings.database_url.get_secret_value(),
            min_size=min_size,
            max_size=max_size,
            reset=_no_reset,
            command_timeout=60,
            timeout=10,
            server_settings=SERVER_SETTINGS,
        )
    except BaseException as exc:
        raise classify(exc, setting="BILLQ_DATABASE_URL") from None
    assert pool is not None
    return pool


async def connect(settings: Settings, *, database: str | None = None) -> asyncpg.Connection:
    """A single connection (advisory locks, migrations)."""
    try:
        return await asyncpg.connect(
            settings.database_url.get_secret_value(),
            timeout=10,
            database=database,
            server_settings=SERVER_SETTINGS,
        )
    except BaseException as exc:
        raise classify(exc, setting="BILLQ_DATABASE_URL") from None
