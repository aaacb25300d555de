"""Read models the dashboard draws: a run's dunning pipeline and throughput, an account's
money. Every query starts from an index (``billing_jobs (run_id, state)``,
``billing_jobs (finished_at)``, the unique ``(account_id, period_start[, dunning_attempt])``
keys), never a scan of all jobs."""

from __future__ import annotations

import asyncpg

# The run's first declines, then every dunning retry of those same periods (any later run).
DUNNING_RETRIES = """
WITH declined AS (
    SELECT account_id, period_start FROM billing_jobs
     WHERE run_id = $1 AND state = 'failed' AND dunning_attempt = 0
)
SELECT j.dunning_attempt AS attempt, j.state, count(*) AS n
  FROM declined d
  JOIN billing_jobs j ON j.account_id = d.account_id AND j.period_start = d.period_start
                     AND j.kind = 'period'
 WHERE j.dunning_attempt > 0
 GROUP BY 1, 2 ORDER BY 1, 2
"""

DUNNING_STATUSES = """
SELECT a.status, count(*) AS n
  FROM billing_jobs j JOIN accounts a ON a.id = j.account_id
 WHERE j.run_id = $1 AND j.state = 'failed' AND j.dunning_attempt = 0
 GROUP BY 1
"""

# Finished jobs per time slice over the run's last WINDOW seconds of activity (up to its
# end, or now while it is open), through billing_jobs_finished_idx.
THROUGHPUT = """
WITH bounds AS (
    SELECT coalesce(r.finished_at, now()) AS t1 FROM billing_runs r WHERE r.id = $1
), done AS (
    SELECT j.finished_at FROM billing_jobs j, bounds b
     WHERE j.run_id = $1 AND j.state IN ('succeeded', 'failed', 'dead', 'already_paid')
       AND j.finished_at > b.t1 - make_interval(secs => $3) AND j.finished_at <= b.t1
), span AS (
    SELECT min(finished_at) AS t0,
           greatest(extract(epoch FROM max(finished_at) - min(finished_at)), 1) AS secs
      FROM done
)
SELECT span.t0, span.secs,
       least(floor(extract(epoch FROM d.finished_at - span.t0) / span.secs * $2)::int, $2 - 1)
           AS slot,
       count(*) AS n
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
