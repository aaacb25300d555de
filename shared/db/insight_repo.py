"""Read models the dashboard draws: a run's dunning pipeline and throughput, an account's
money. A run's figures come from its summary rows (``run_summary_totals``, migration 0009),
an account's from the unique ``(account_id, period_start)`` keys: never a scan of all jobs."""

from __future__ import annotations

import asyncpg

# The run's first declines' dunning retries (in any later run) by attempt and state.
DUNNING_RETRIES = """
SELECT attempt, key AS state, n
  FROM run_summary_totals WHERE run_id = $1 AND kind = 'retry'
 ORDER BY attempt, key
"""

# The run's first declines by their account's status now.
DUNNING_STATUSES = """
SELECT key AS status, n FROM run_summary_totals WHERE run_id = $1 AND kind = 'dunning'
"""

# Finished jobs per time slice over the run's last WINDOW seconds of activity (up to its
# end, or now while it is open), from the run's per-second summary rows.
THROUGHPUT = """
WITH bounds AS (
    SELECT extract(epoch FROM coalesce(r.finished_at, now()))::float8 AS t1
      FROM billing_runs r WHERE r.id = $1
), done AS (
    SELECT s.second, s.n FROM run_summary_totals s, bounds b
     WHERE s.run_id = $1 AND s.kind = 'finished'
       AND s.second > b.t1 - $3::float8 - 1 AND s.second <= b.t1
), span AS (
    SELECT min(second) AS t0, greatest(max(second) - min(second) + 1, 1) AS secs FROM done
)
SELECT to_timestamp(span.t0::float8) AS t0, span.secs,
       least(floor((d.second - span.t0)::float8 / span.secs * $2)::int, $2 - 1) AS slot,
       sum(d.n) AS n
  FROM done d, span
 GROUP BY 1, 2, 3 ORDER BY 3
"""

# Period charges through their (account, period) key, one-off charges through theirs.
CHARGES = """
SELECT * FROM (
    (SELECT id, kind, job_id, period_start, amount_cents, currency, gateway_charge_id,
            created_at
       FROM charges WHERE account_id = $1 AND kind = 'period'
      ORDER BY period_start DESC LIMIT $2)
    UNION ALL
    (SELECT id, kind, job_id, period_start, amount_cents, currency, gateway_charge_id,
            created_at
       FROM charges WHERE account_id = $1 AND kind <> 'period'
      ORDER BY id DESC LIMIT $2)
) c ORDER BY period_start DESC, id DESC LIMIT $2
"""


async def dunning_retries(pool: asyncpg.Pool, run_id: int) -> list[asyncpg.Record]:
    return list(await pool.fetch(DUNNING_RETRIES, run_id))


async def dunning_statuses(pool: asyncpg.Pool, run_id: int) -> dict[str, int]:
    return {r["status"]: int(r["n"]) for r in await pool.fetch(DUNNING_STATUSES, run_id)}


async def throughput(
    pool: asyncpg.Pool, run_id: int, slots: int, window_s: float
) -> list[asyncpg.Record]:
    return list(await pool.fetch(THROUGHPUT, run_id, slots, window_s))


async def charges(pool: asyncpg.Pool, account_id: int, limit: int) -> list[asyncpg.Record]:
    return list(await pool.fetch(CHARGES, account_id, limit))
