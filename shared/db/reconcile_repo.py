"""SQL for the reconciler: find jobs that stopped moving and repair them."""

from __future__ import annotations

import asyncpg

from shared.db.jobs_repo import STALE_WORKER_S

RECONCILER_ID = "reconciler"

# Held by nobody alive: lease expired, or the holder's heartbeat is stale.
ABANDONED = """
SELECT j.id, j.kind, j.account_id, j.period_start, j.idempotency_key, j.run_id, j.state, j.attempts,
       j.amount_cents, j.currency, j.dunning_attempt,
       (SELECT ch.gateway_charge_id FROM charges ch WHERE ch.id = j.refund_of) AS refund_charge
  FROM billing_jobs j
 WHERE j.state = 'processing'
   AND (j.locked_until < now()
        OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = j.locked_by
                        AND w.last_heartbeat > now() - make_interval(secs => $1)))
 ORDER BY j.id
 LIMIT $2
"""

# Waiting for a message that may no longer exist.
STALLED = """
SELECT j.id, j.kind, j.account_id, j.period_start, j.idempotency_key, j.run_id, j.state, j.attempts,
       j.dunning_attempt, j.updated_at
  FROM billing_jobs j
 WHERE j.state IN ('published', 'retrying')
   AND j.updated_at < now() - make_interval(secs => $1)
 ORDER BY j.id
 LIMIT $2
"""

# The same jobs, unchanged since they were read (a claim or a retry changes updated_at).
STILL_STALLED = """
SELECT j.id, j.kind, j.account_id, j.period_start, j.idempotency_key, j.run_id, j.state, j.attempts,
       j.dunning_attempt
  FROM billing_jobs j JOIN unnest($1::bigint[], $2::timestamptz[]) AS s(id, updated_at)
    ON j.id = s.id AND j.updated_at = s.updated_at
 WHERE j.state IN ('published', 'retrying')
 ORDER BY j.id
"""

# Refund jobs that may have been sent (claimed before) and hold no refund row, not in flight:
# retrying, dead, or revived by an operator. The gateway may hold their refund (a timeout,
# a call still running when its worker gave up); reconcile asks it by the job's key.
UNRECORDED_REFUNDS = """
SELECT j.id, j.state, j.attempts, j.idempotency_key, j.refund_of, ch.gateway_charge_id
  FROM billing_jobs j
  JOIN charges ch ON ch.id = j.refund_of
 WHERE j.refund_of IS NOT NULL AND j.attempts > 0
   AND j.state IN ('pending', 'published', 'retrying', 'dead')
   AND (j.state <> 'dead' OR j.finished_at > now() - make_interval(days => $1))
   AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.idempotency_key = j.idempotency_key)
 ORDER BY j.id
 LIMIT $2
"""

# Take such a job for the record, fenced on what was read: a worker that moved it since wins.
TAKE_REFUND = """
UPDATE billing_jobs SET state = 'processing', attempts = attempts + 1, locked_by = $4,
       locked_until = now() + interval '60 seconds', updated_at = now()
 WHERE id = $1 AND attempts = $2 AND state = $3
RETURNING attempts
"""

# The API's outbox: one-off and refund jobs (no run) committed but never published — their
# creator died or lost its broker between the commit and the publish. Older than the
# creator's confirm wait, so a publish still under way is not doubled. The one rule for such
# jobs: `reconcile` and every `distribute` (its reconcile step) page through it by id after
# $3; the distributor's own outbox repair (runs_repo.PENDING_BATCH) leaves them alone.
UNPUBLISHED_OUTSIDE_RUNS = """
SELECT id, kind, account_id, period_start, idempotency_key, run_id, dunning_attempt
  FROM billing_jobs
 WHERE state = 'pending' AND run_id IS NULL AND id > $3
   AND created_at < now() - make_interval(secs => $1)
 ORDER BY id
 LIMIT $2
"""

OPEN_WAITING = "SELECT count(*) FROM billing_jobs WHERE state IN ('published', 'retrying')"

# Take the job from its dead holder (fencing) so the holder's late commit changes nothing.
TAKE_OVER = """
UPDATE billing_jobs SET attempts = attempts + 1, locked_by = $3, updated_at = now(),
       locked_until = now() + interval '60 seconds'
 WHERE id = $1 AND attempts = $2 AND state = 'processing'
RETURNING attempts
"""

RELEASE = """
UPDATE billing_jobs SET state = 'retrying', locked_by = NULL, locked_until = NULL,
       updated_at = now(), last_error = coalesce(last_error, $3)
 WHERE id = $1 AND attempts = $2 AND state = 'processing'
"""

TOUCH = "UPDATE billing_jobs SET updated_at = now() WHERE id = ANY($1::bigint[])"


async def abandoned(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    return list(await pool.fetch(ABANDONED, STALE_WORKER_S, limit))


async def stalled(pool: asyncpg.Pool, older_than_s: float, limit: int) -> list[asyncpg.Record]:
    return list(await pool.fetch(STALLED, older_than_s, limit))


async def still_stalled(pool: asyncpg.Pool, rows: list[asyncpg.Record]) -> list[asyncpg.Record]:
    """Those of ``rows`` (from ``stalled``) that nobody has touched since."""
    ids, seen = [r["id"] for r in rows], [r["updated_at"] for r in rows]
    return list(await pool.fetch(STILL_STALLED, ids, seen))


async def unrecorded_refunds(
    pool: asyncpg.Pool, dead_within_days: int, limit: int
) -> list[asyncpg.Record]:
    return list(await pool.fetch(UNRECORDED_REFUNDS, dead_within_days, limit))


async def take_refund(pool: asyncpg.Pool, job_id: int, attempts: int, state: str) -> int | None:
    value = await pool.fetchval(TAKE_REFUND, job_id, attempts, state, RECONCILER_ID)
    return int(value) if value is not None else None


async def unpublished_outside_runs(
    pool: asyncpg.Pool, older_than_s: float, limit: int, after_id: int = 0
) -> list[asyncpg.Record]:
    return list(await pool.fetch(UNPUBLISHED_OUTSIDE_RUNS, older_than_s, limit, after_id))


async def open_waiting(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval(OPEN_WAITING))


async def take_over(pool: asyncpg.Pool, job_id: int, attempts: int) -> int | None:
    value = await pool.fetchval(TAKE_OVER, job_id, attempts, RECONCILER_ID)
    return int(value) if value is not None else None


async def release(pool: asyncpg.Pool, job_id: int, attempts: int, reason: str) -> bool:
    status = await pool.execute(RELEASE, job_id, attempts, reason)
    return status.endswith(" 1")


async def touch(pool: asyncpg.Pool, job_ids: list[int]) -> None:
    await pool.execute(TOUCH, job_ids)
