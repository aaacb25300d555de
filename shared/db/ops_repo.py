"""Operator actions on jobs: list, retry, cancel, revive after a dead-letter replay."""

from __future__ import annotations

import asyncpg

LIST = """
SELECT id, run_id, account_id, period_start, idempotency_key, state, attempts, last_error,
       locked_by, created_at, finished_at
  FROM billing_jobs
 WHERE ($1::text IS NULL OR state = $1)
   AND ($2::bigint IS NULL OR run_id = $2)
   AND ($3::bigint IS NULL OR account_id = $3)
 ORDER BY id DESC
 LIMIT $4
"""

GET = """
SELECT id, run_id, account_id, period_start, idempotency_key, state, attempts
  FROM billing_jobs WHERE id = $1
"""

# Fresh attempt budget (attempt_base), same fencing token sequence (attempts).
REVIVE = """
UPDATE billing_jobs
   SET state = 'published', attempt_base = attempts, replays = replays + 1,
       finished_at = NULL, updated_at = now(),
       last_error = left('replayed by operator; was: ' || coalesce(last_error, '?'), 1000)
 WHERE id = ANY($1::bigint[]) AND state = 'dead'
RETURNING id, account_id, period_start, idempotency_key, run_id, attempts
"""

# Never a job in flight: its worker's commit is guarded by state = 'processing', and a
# charge already made at the gateway must still be recorded.
CANCEL = """
UPDATE billing_jobs
   SET state = 'dead', finished_at = now(), updated_at = now(),
       last_error = 'cancelled by operator'
 WHERE id = $1 AND state IN ('pending', 'published', 'retrying')
RETURNING id
"""

OPEN_COUNT = """
SELECT count(*) FROM billing_jobs
 WHERE state IN ('pending', 'published', 'processing', 'retrying')
"""

RECENT_RATE = """
SELECT count(*) / $1::float FROM billing_jobs
 WHERE finished_at > now() - make_interval(secs => $1)
"""


async def list_jobs(
    pool: asyncpg.Pool, state: str | None, run: int | None, account: int | None, limit: int
) -> list[asyncpg.Record]:
    return list(await pool.fetch(LIST, state, run, account, limit))


async def get(pool: asyncpg.Pool, job_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(GET, job_id)
    return row


async def revive(pool: asyncpg.Pool, job_ids: list[int]) -> list[asyncpg.Record]:
    return list(await pool.fetch(REVIVE, job_ids))


async def cancel(pool: asyncpg.Pool, job_id: int) -> bool:
    return await pool.fetchval(CANCEL, job_id) is not None


async def open_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval(OPEN_COUNT))


async def recent_rate(pool: asyncpg.Pool, window_s: float) -> float:
    return float(await pool.fetchval(RECENT_RATE, window_s) or 0.0)
