"""Operator actions on jobs: list, retry, cancel, revive after a dead-letter replay."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# Newest first, one page at a time: ``$5`` is the last id of the previous page (keyset), so
# a page deep into a million-job run costs what the first one does.
LIST = """
SELECT id, kind, run_id, account_id, period_start, idempotency_key, state, attempts, last_error,
       locked_by, created_at, finished_at
  FROM billing_jobs
 WHERE ($1::text IS NULL OR state = $1)
   AND ($2::bigint IS NULL OR run_id = $2)
   AND ($3::bigint IS NULL OR account_id = $3)
   AND ($5::bigint IS NULL OR id < $5)
 ORDER BY id DESC
 LIMIT $4
"""

GET = """
SELECT id, kind, run_id, account_id, period_start, idempotency_key, state, attempts, cancelled_at,
       dunning_attempt
  FROM billing_jobs WHERE id = $1
"""

GET_MANY = """
SELECT id, kind, run_id, account_id, period_start, idempotency_key, state, attempts, cancelled_at,
       dunning_attempt
  FROM billing_jobs WHERE id = ANY($1::bigint[])
"""

# Fresh attempt budget (attempt_base), same fencing token sequence (attempts). Never a job
# an operator cancelled. Whether the period may still be charged is the claim's gate.
REVIVE = """
UPDATE billing_jobs
   SET state = 'published', attempt_base = attempts, replays = replays + 1,
       finished_at = NULL, updated_at = now(),
       last_error = left('replayed by operator; was: ' || coalesce(last_error, '?'), 1000)
 WHERE id = ANY($1::bigint[]) AND state = 'dead' AND cancelled_at IS NULL
RETURNING id, kind, account_id, period_start, idempotency_key, run_id, attempts, dunning_attempt
"""

# A dead letter revives its job only if its body names that very job (account and key).
REVIVE_MATCHING = """
WITH letter AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS l(job_id, account_id, key)
)
UPDATE billing_jobs j
   SET state = 'published', attempt_base = attempts, replays = replays + 1,
       finished_at = NULL, updated_at = now(),
       last_error = left('replayed by operator; was: ' || coalesce(last_error, '?'), 1000)
  FROM (SELECT DISTINCT * FROM letter) l
 WHERE j.id = l.job_id AND j.account_id = l.account_id AND j.idempotency_key = l.key
   AND j.state = 'dead' AND j.cancelled_at IS NULL
RETURNING j.id, j.kind, j.account_id, j.period_start, j.idempotency_key, j.run_id, j.attempts,
          j.dunning_attempt
"""

# A run whose jobs are retried is open again; it settles by itself when they end.
REOPEN_RUNS = """
UPDATE billing_runs SET state = 'published', finished_at = NULL
 WHERE id IN (SELECT run_id FROM billing_jobs WHERE id = ANY($1::bigint[]))
   AND state IN ('completed', 'completed_with_failures')
"""

# Never claimed: no gateway call can have happened, so it may end at once.
CANCEL_UNCLAIMED = """
UPDATE billing_jobs
   SET state = 'dead', finished_at = now(), updated_at = now(),
       last_error = 'cancelled by operator', cancelled_at = now(), cancelled_by = $2
 WHERE id = $1 AND state IN ('pending', 'published', 'retrying') AND attempts = 0
RETURNING id
"""

# Claimed before: take it (fenced) while the gateway is asked what its key holds.
TAKE_FOR_CANCEL = """
UPDATE billing_jobs
   SET state = 'processing', attempts = attempts + 1, updated_at = now(),
       locked_by = 'operator:' || $2, locked_until = now() + interval '60 seconds'
 WHERE id = $1 AND state IN ('pending', 'published', 'retrying')
RETURNING attempts
"""

CANCEL_TAKEN = """
UPDATE billing_jobs
   SET state = 'dead', finished_at = now(), updated_at = now(), locked_by = NULL,
       locked_until = NULL, last_error = 'cancelled by operator (no charge at the gateway)',
       cancelled_at = now(), cancelled_by = $3
 WHERE id = $1 AND attempts = $2 AND state = 'processing'
"""

RELEASE = """
UPDATE billing_jobs SET state = 'retrying', locked_by = NULL, locked_until = NULL,
       updated_at = now(), last_error = $3
 WHERE id = $1 AND attempts = $2 AND state = 'processing'
RETURNING id, kind, account_id, period_start, idempotency_key, run_id, attempts, dunning_attempt
"""

RECORD_ACTION = """
INSERT INTO operator_actions (actor, action, target, outcome) VALUES ($1, $2, $3, $4)
"""

OPEN_COUNT = """
SELECT count(*) FROM billing_jobs
 WHERE state IN ('pending', 'published', 'processing', 'retrying')
"""

RECENT_RATE = """
SELECT count(*) / $1::float FROM billing_jobs
 WHERE finished_at > now() - make_interval(secs => $1)
"""


@dataclass(frozen=True, slots=True)
class JobsPage:
    """Which jobs ``LIST`` returns: the filters (None: any), the page size, and the id the
    page starts below (None: the newest)."""

    state: str | None
    run: int | None
    account: int | None
    limit: int
    before: int | None = None


async def list_jobs(pool: asyncpg.Pool, page: JobsPage) -> list[asyncpg.Record]:
    return list(await pool.fetch(LIST, page.state, page.run, page.account, page.limit, page.before))


async def get(pool: asyncpg.Pool, job_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(GET, job_id)
    return row


async def get_many(pool: asyncpg.Pool, job_ids: list[int]) -> list[asyncpg.Record]:
    return list(await pool.fetch(GET_MANY, job_ids))


async def revive(pool: asyncpg.Pool, job_ids: list[int]) -> list[asyncpg.Record]:
    return list(await pool.fetch(REVIVE, job_ids))


async def revive_matching(
    pool: asyncpg.Pool, job_ids: list[int], account_ids: list[int | None], keys: list[str | None]
) -> list[asyncpg.Record]:
    return list(await pool.fetch(REVIVE_MATCHING, job_ids, account_ids, keys))


async def reopen_runs(pool: asyncpg.Pool, job_ids: list[int]) -> None:
    if job_ids:
        await pool.execute(REOPEN_RUNS, job_ids)


async def cancel_unclaimed(pool: asyncpg.Pool, job_id: int, actor: str) -> bool:
    return await pool.fetchval(CANCEL_UNCLAIMED, job_id, actor) is not None


async def take_for_cancel(pool: asyncpg.Pool, job_id: int, actor: str) -> int | None:
    value = await pool.fetchval(TAKE_FOR_CANCEL, job_id, actor)
    return int(value) if value is not None else None


async def cancel_taken(pool: asyncpg.Pool, job_id: int, token: int, actor: str) -> bool:
    status = await pool.execute(CANCEL_TAKEN, job_id, token, actor)
    return status.endswith(" 1")


async def release(
    pool: asyncpg.Pool, job_id: int, token: int, reason: str
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(RELEASE, job_id, token, reason)
    return row


async def open_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval(OPEN_COUNT))


async def recent_rate(pool: asyncpg.Pool, window_s: float) -> float:
    return float(await pool.fetchval(RECENT_RATE, window_s) or 0.0)
