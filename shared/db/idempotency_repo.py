"""api_idempotency_keys: the caller's Idempotency-Key, its request's hash and first answer.

Used inside the transaction that does the request's work (``begin`` first, ``store`` last),
so the record and the work commit together or not at all. The primary key serialises two
requests with one key: the second waits on the first's row, then replays its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from shared.db.pool import Conn

# Claims the key for this transaction; nothing back: another request holds (or held) it.
BEGIN = """
INSERT INTO api_idempotency_keys (key, endpoint, request_hash, status, response)
VALUES ($1, $2, $3, 0, 'null'::jsonb)
ON CONFLICT (key) DO NOTHING
RETURNING key
"""

# A new statement sees the row the conflicting transaction committed.
EARLIER = """
SELECT endpoint, request_hash, status, response FROM api_idempotency_keys WHERE key = $1
"""

STORE = """
UPDATE api_idempotency_keys SET status = $2, response = $3::jsonb, job_id = $4 WHERE key = $1
"""


@dataclass(frozen=True, slots=True)
class Earlier:
    """The first request made with a key, and the answer it got."""

    endpoint: str
    request_hash: str
    status: int
    response: Any


async def begin(conn: Conn, key: str, endpoint: str, request_hash: str) -> Earlier | None:
    """None: the key is this transaction's to use; else the earlier request under it."""
    if await conn.fetchval(BEGIN, key, endpoint, request_hash) is not None:
        return None
    row = await conn.fetchrow(EARLIER, key)
    assert row is not None  # keys are never deleted
    return Earlier(
        row["endpoint"], row["request_hash"], row["status"], orjson.loads(row["response"])
    )


async def store(conn: Conn, key: str, status: int, response: Any, job_id: int | None) -> None:
    """The answer to replay for this key (in the transaction that did the work)."""
    await conn.execute(STORE, key, status, orjson.dumps(response).decode(), job_id)
