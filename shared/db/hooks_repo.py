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

# Events of runs that settled before any billq process had a webhook URL are never sent:
# setting BILLQ_RUN_WEBHOOK_URL later must not flood the receiver with months of backlog.
# The first call with a URL stores the time (migration 0012; DO NOTHING, so the row is written
# once, not on every heartbeat); every call skips what is older and still pending.
SKIP_BACKLOG = """
WITH first AS (
    INSERT INTO run_hook_settings (configured_since) VALUES (now())
    ON CONFLICT (only_one) DO NOTHING
    RETURNING configured_since
), since AS (
    SELECT min(t) AS t FROM (SELECT configured_since FROM first
                             UNION ALL
                             SELECT configured_since FROM run_hook_settings) s(t)
)
UPDATE run_hook_events e
   SET state = 'skipped',
       last_error = 'not sent: the run settled before BILLQ_RUN_WEBHOOK_URL was configured'
  FROM since
 WHERE e.state = 'pending' AND e.created_at < since.t
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
async def skip_backlog(pool: asyncpg.Pool) -> int:
    """Mark events older than the first configured URL 'skipped'; how many were."""
    status = await pool.execute(SKIP_BACKLOG)
    return int(status.rsplit(" ", 1)[-1])


@classified
async def mark_delivered(pool: asyncpg.Pool, row_id: int) -> None:
    await pool.execute(MARK_DELIVERED, row_id)


@classified
async def mark_attempt_failed(
    pool: asyncpg.Pool, row_id: int, error: str, retry_in_s: float, max_attempts: int
) -> None:
    await pool.execute(MARK_ATTEMPT_FAILED, row_id, error[:500], retry_in_s, max_attempts)
