"""Apply the numbered SQL files in ``migrations/``: idempotent, safe to run from many hosts.

The database is created when missing; an advisory lock serialises concurrent
``billq migrate`` runs; ``schema_migrations`` records each applied file and its checksum.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shared.config import Settings
from shared.db.pool import connect
from shared.errors import ConfigError

# Arbitrary constant; shared by every billq host so migrations serialise.
MIGRATION_LOCK_ID = 0x62696C6C71_01

_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The SQL files: beside the source tree, or packaged inside the wheel."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "migrations", here.parent / "sql_migrations"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("migrations directory not found in the installation")


def load_migrations(directory: Path | None = None) -> list[Migration]:
    found = []
    for path in sorted((directory or migrations_dir()).iterdir()):
        match = _FILE.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), path.name, path.read_text()))
    return found


def _database_name(settings: Settings) -> str:
    from urllib.parse import urlsplit

    name = urlsplit(settings.database_url.get_secret_value()).path.lstrip("/")
    if not name:
        raise ConfigError("BILLQ_DATABASE_URL: no database name in the URL")
    return name


async def ensure_database(settings: Settings) -> bool:
    """Create the database if it is missing; True when it was created."""
    name = _database_name(settings)
    conn = await connect(settings, database="postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        try:
            # Identifiers cannot be bound parameters; quote_ident-style escaping instead.
            await conn.execute('CREATE DATABASE "{}"'.format(name.replace('"', '""')))
        except asyncpg.DuplicateDatabaseError:
            return False  # another host created it first
        return True
    finally:
        await conn.close()


async def migrate(settings: Settings) -> list[str]:
    """Apply pending migrations; returns the names applied by this call.

    Raises:
        ConfigError: an applied migration's file changed since it was applied.
    """
    await ensure_database(settings)
    conn = await connect(settings)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(CREATE_LEDGER)
            done = {
                r["version"]: r["checksum"]
                for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
            }
            for m in load_migrations():
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise ConfigError(
                            f"migration {m.name} changed after it was applied; "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
                applied.append(m.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    finally:
        await conn.close()
    return applied
