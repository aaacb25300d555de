"""The run hook outbox (``run_hook_events``): claim due events, record each attempt.

Rows are written by the ``run_hook_on_settle`` trigger (migration 0008) in the transaction
that settles a run; this module only moves them through delivery.
"""

from __future__ import annotations

import asyncpg

from shared.db.errors import classified

# One statement claims a batch: several workers heartbeat at once, SKIP LOCKED gives each
# different events, and the lease (next_attempt_at pushed ahead) keeps a claimed event from
# being posted twice at once — if its deliverer dies, the lease lapses and another retries.
CLAIM_DUE = """
UPDATE run_hook_events
   SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
 WHERE id IN (SELECT id FROM run_hook_events
               WHERE state = 'pending' AND next_attempt_at <= now()
               ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING id, event_id, type, payload, created_at, attempts
"""

MARK_DELIVERED = """
UPDATE run_hook_events SET state = 'delivered', delivered_at = now(), last_error = NULL
 WHERE id = $1
"""

# Backoff: the next attempt waits $3 seconds; after $4 attempts the event is given up on
# ('failed', shown in `billq runs`; `billq runs` does not resend it).
MARK_ATTEMPT_FAILED = """
UPDATE run_hook_events
   SET last_error = $2, next_attempt_at = now() + make_interval(secs => $3),
       state = CASE WHEN attempts >= $4 THEN 'failed' ELSE state END
 WHERE id = $1
"""


@classified
async def claim_due(pool: asyncpg.Pool, limit: int, lease_s: float) -> list[asyncpg.Record]:
    return list(await pool.fetch(CLAIM_DUE, limit, lease_s))


@classified
async def mark_delivered(pool: asyncpg.Pool, row_id: int) -> None:
    await pool.execute(MARK_DELIVERED, row_id)


@classified
async def mark_attempt_failed(
    pool: asyncpg.Pool, row_id: int, error: str, retry_in_s: float, max_attempts: int
) -> None:
    await pool.execute(MARK_ATTEMPT_FAILED, row_id, error[:500], retry_in_s, max_attempts)
