"""billing_runs and the distributor's side of billing_jobs (the outbox)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from shared.db.errors import classified, retried_on_conflict

# Shared by every distributor host: one distribution at a time.
DISTRIBUTE_LOCK_ID = 0x62696C6C71_02
# Find-or-create of a run. It equals the migration lock's id (0x..._01), and that is kept on
# purpose: no run is created while a migration runs, and distributors of the previous release,
# which use this id, still serialise with this one during a rolling upgrade.
RUN_CREATE_LOCK_ID = DISTRIBUTE_LOCK_ID - 1

# Keyset pages over accounts_due_idx, each its own short statement: no snapshot lives for
# the whole scan (a long snapshot keeps vacuum from removing the job rows workers update
# meanwhile, three versions per job). One period per account per run: a page starts after
# the last (next_billing_at, id) seen, and an account a worker has advanced since it was
# seen (a catch-up account still due) is skipped because it already has a job in this run.
DUE_PAGE = """
SELECT a.id, a.next_billing_at, a.billing_interval, a.billing_anchor_day, a.amount_cents,
       a.currency, a.dunning_attempt, a.payment_method, a.gateway_customer,
       last.period_start AS last_period_start, last.created_at AS last_period_at
  FROM accounts a
  LEFT JOIN LATERAL (
      -- The newest period this account got a first job for (catch-up pacing).
      SELECT j.period_start, j.created_at FROM billing_jobs j
       WHERE j.account_id = a.id AND j.kind = 'period' AND j.dunning_attempt = 0
       ORDER BY j.period_start DESC LIMIT 1) last ON true
  -- "A job in this run already", looked up among the account's own few jobs: a LATERAL with
  -- LIMIT is always probed per account. As NOT EXISTS the planner, whose statistics mid-run
  -- do not know the new run and guess it has a handful of jobs, scanned all of the run's
  -- jobs for every account (a bitmap of the (run_id, state) index, or a seq scan in the
  -- generic plan of the prepared statement): pages went quadratic, 20 s a page of 1,000 at
  -- 39,000 jobs in a 400,000-account soak. IS NOT DISTINCT FROM (the same for a non-null run
  -- id) keeps any index on run_id out of the probe.
  LEFT JOIN LATERAL (
      SELECT true AS found FROM billing_jobs j
       WHERE j.account_id = a.id AND j.kind = 'period' AND j.run_id IS NOT DISTINCT FROM $6
       LIMIT 1) mine ON true
 WHERE a.status IN ('active', 'past_due') AND a.next_billing_at <= $1
   AND (a.next_billing_at, a.id) > ($4, $5)
   AND (a.dunning_next_at IS NULL OR a.dunning_next_at <= $1)
   AND (a.cancelled_at IS NULL OR a.next_billing_at < a.cancelled_at)
   AND ($2::int IS NULL OR a.id % $2 = $3)
   AND mine.found IS NULL
 ORDER BY a.next_billing_at, a.id
 LIMIT $7
"""

CUSTOM_PLAN = "SET LOCAL plan_cache_mode = force_custom_plan"

COUNT_DUE = """
SELECT count(*) FROM accounts
 WHERE status IN ('active', 'past_due') AND next_billing_at <= $1
   AND (dunning_next_at IS NULL OR dunning_next_at <= $1)
   AND (cancelled_at IS NULL OR next_billing_at < cancelled_at)
   AND ($2::int IS NULL OR id % $2 = $3)
"""

INSERT_JOBS = """
INSERT INTO billing_jobs (run_id, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, dunning_attempt, payment_method,
                          gateway_customer)
SELECT $1, * FROM unnest($2::bigint[], $3::date[], $4::date[], $5::text[], $6::int[], $7::text[],
                         $8::smallint[], $9::text[], $10::text[])
ON CONFLICT DO NOTHING
RETURNING id, account_id, period_start, idempotency_key, run_id, dunning_attempt
"""

# Due accounts whose planned job already exists and has ended: why they got nothing.
EXISTING_JOBS = """
SELECT id, account_id, period_start, state, last_error
  FROM billing_jobs WHERE idempotency_key = ANY($1::text[])
"""

INSERT_BLOCKED = """
INSERT INTO run_blocked (run_id, account_id, period_start, job_id, reason)
SELECT $1, * FROM unnest($2::bigint[], $3::date[], $4::bigint[], $5::text[])
ON CONFLICT (run_id, account_id) DO UPDATE SET reason = EXCLUDED.reason
"""

COUNT_BLOCKED = """
UPDATE billing_runs SET blocked = blocked + $2, future_periods = future_periods + $3 WHERE id = $1
"""

# A run left 'running' by a distributor that died (the caller holds the distribution lock,
# so no live unsharded distributor owns one; a sharded run is given its join window).
ORPHANED_RUNS = """
UPDATE billing_runs
   SET state = 'published',
       error = coalesce(error, 'its distributor ended without finishing; settled by a later run')
 WHERE state = 'running' AND id IS DISTINCT FROM $2
   AND (shards = 1 OR started_at < now() - make_interval(secs => $1))
RETURNING id
"""

# Runs' orphans only, not those of a sharded run whose other shards may still publish. Jobs
# of no run: reconcile_repo.UNPUBLISHED_OUTSIDE_RUNS (after BILLQ_PUBLISH_TIMEOUT).
PENDING_BATCH = """
SELECT id, kind, account_id, period_start, idempotency_key, run_id, dunning_attempt
  FROM billing_jobs
 WHERE state = 'pending' AND id > $1 AND run_id IS NOT NULL
   AND run_id NOT IN (SELECT r.id FROM billing_runs r
                       WHERE r.state = 'running' AND r.shards > 1
                         AND r.shards_done < r.shards
                         AND r.started_at > now() - make_interval(secs => $3))
 ORDER BY id
 LIMIT $2
"""

# Rows locked in id order, skipping rows a worker is claiming right now: the distributor
# never waits for a worker's lock, so the two cannot deadlock (a worker's claim locks its
# batch in whatever order its join produces). A skipped row is being moved on by a worker
# (state 'processing' once it commits); if that claim rolls back, the row stays 'pending'
# and the next run's outbox repair publishes it again (a duplicate the claim absorbs).
MARK_PUBLISHED = """
WITH target AS (
    SELECT id FROM billing_jobs
     WHERE id = ANY($1::bigint[]) AND state = 'pending'
     ORDER BY id
       FOR UPDATE SKIP LOCKED
)
UPDATE billing_jobs j SET state = 'published', published_at = now(), updated_at = now()
  FROM target t
 WHERE j.id = t.id
"""

CREATE_RUN = "INSERT INTO billing_runs (as_of) VALUES ($1) RETURNING id"

# Shards add their figures; the run is published when the last shard finished.
FINISH_RUN = """
UPDATE billing_runs
   SET due = due + $3, published = published + $4, error = coalesce($5, error),
       shards_done = shards_done + 1,
       state = CASE WHEN $2 = 'failed' THEN 'failed'
                    WHEN shards_done + 1 >= shards THEN $2 ELSE state END
 WHERE id = $1
"""

COMPLETE_EMPTY_RUN = """
UPDATE billing_runs SET state = 'completed', finished_at = now()
 WHERE id = $1 AND state = 'published' AND NOT EXISTS (SELECT 1 FROM billing_jobs WHERE run_id = $1)
"""


async def try_lock(conn: asyncpg.Connection, shard: tuple[int, int] | None = None) -> bool:
    """One distributor at a time — per shard when sharded (each shard has its own lock)."""
    lock_id = DISTRIBUTE_LOCK_ID if shard is None else DISTRIBUTE_LOCK_ID + 1 + shard[0]
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_id))


# Shards of one cron tick: the open run with the same shard count started within the join
# window; with an explicit --as-of, only the run of that as-of.
JOIN_SHARDED_RUN = """
SELECT id, as_of FROM billing_runs
 WHERE shards = $2 AND shards_done < shards AND state = 'running'
   AND ($1::timestamptz IS NULL OR as_of = $1)
   AND started_at > now() - make_interval(secs => $3)
 ORDER BY id DESC LIMIT 1
"""

SHARD_JOIN_WINDOW_S = 600.0


@classified
async def join_or_create_run(
    pool: asyncpg.Pool, as_of: dt.datetime, shards: int, *, explicit_as_of: bool = True
) -> tuple[int, dt.datetime]:
    """(run id, its as-of): the open run the other shards of this tick feed, or a new one.

    A shard started by cron without ``--as-of`` joins the tick's run and bills at that run's
    as-of, so shards started seconds apart form one run that completes."""
    async with pool.acquire() as conn, conn.transaction():
        # Serialise find-or-create across shards starting at the same moment.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", RUN_CREATE_LOCK_ID)
        row = await conn.fetchrow(
            JOIN_SHARDED_RUN, as_of if explicit_as_of else None, shards, SHARD_JOIN_WINDOW_S
        )
        if row is not None:
            return int(row["id"]), row["as_of"]
        run_id = await conn.fetchval(
            "INSERT INTO billing_runs (as_of, shards) VALUES ($1, $2) RETURNING id",
            as_of,
            shards,
        )
        return int(run_id), as_of


async def scan_due(
    pool: asyncpg.Pool,
    as_of: dt.datetime,
    batch: int,
    shard: tuple[int, int] | None,
    run_id: int,
) -> AsyncIterator[list[asyncpg.Record]]:
    """Yield due accounts in keyset pages, one short statement each (see DUE_PAGE)."""
    n, k = (shard[1], shard[0]) if shard else (None, None)
    after: tuple[dt.datetime, int] = (dt.datetime.min.replace(tzinfo=dt.UTC), -(2**63))
    while rows := await _due_page(pool, as_of, n, k, after, run_id, batch):
        yield rows
        after = (rows[-1]["next_billing_at"], rows[-1]["id"])


@classified
async def _due_page(
    pool: asyncpg.Pool,
    as_of: dt.datetime,
    n: int | None,
    k: int | None,
    after: tuple[dt.datetime, int],
    run_id: int,
    batch: int,
) -> list[asyncpg.Record]:
    async with pool.acquire() as conn, conn.transaction():
        # Planned for this page's own keyset values: after five pages Postgres may switch the
        # prepared statement to a generic plan, which (not knowing where the page starts)
        # sorted every remaining due account for each page of a soak.
        await conn.execute(CUSTOM_PLAN)
        return list(await conn.fetch(DUE_PAGE, as_of, n, k, after[0], after[1], run_id, batch))


@classified
async def count_due(pool: asyncpg.Pool, as_of: dt.datetime, shard: tuple[int, int] | None) -> int:
    n, k = (shard[1], shard[0]) if shard else (None, None)
    return int(await pool.fetchval(COUNT_DUE, as_of, n, k))


@classified
@retried_on_conflict
async def insert_jobs(
    pool: asyncpg.Pool, run_id: int, cols: Sequence[list[Any]]
) -> list[asyncpg.Record]:
    return list(await pool.fetch(INSERT_JOBS, run_id, *cols))


@classified
async def existing_jobs(pool: asyncpg.Pool, keys: list[str]) -> list[asyncpg.Record]:
    return list(await pool.fetch(EXISTING_JOBS, keys))


@classified
async def record_blocked(
    pool: asyncpg.Pool, run_id: int, blocked: Sequence[dict[str, Any]], future_periods: int
) -> None:
    if blocked:
        await pool.execute(
            INSERT_BLOCKED,
            run_id,
            [b["account_id"] for b in blocked],
            [b["period_start"] for b in blocked],
            [b["job_id"] for b in blocked],
            [b["reason"] for b in blocked],
        )
    if blocked or future_periods:
        await pool.execute(COUNT_BLOCKED, run_id, len(blocked), future_periods)


@classified
async def settle_orphaned_runs(pool: asyncpg.Pool, resuming: int | None = None) -> list[int]:
    """Runs whose distributor died mid-run are published, then settle like any other;
    ``resuming`` is the caller's own run, which a failover pass is about to finish."""
    ids = [int(r["id"]) for r in await pool.fetch(ORPHANED_RUNS, SHARD_JOIN_WINDOW_S, resuming)]
    for run_id in ids:
        await pool.execute(SETTLE_RUN, run_id)
    return ids


@classified
async def pending_batch(
    pool: asyncpg.Pool, after_id: int, limit: int, open_run_grace_s: float = 600.0
) -> list[asyncpg.Record]:
    return list(await pool.fetch(PENDING_BATCH, after_id, limit, open_run_grace_s))


@classified
@retried_on_conflict
async def mark_published(pool: asyncpg.Pool, job_ids: list[int]) -> None:
    await pool.execute(MARK_PUBLISHED, job_ids)


@classified
async def create_run(pool: asyncpg.Pool, as_of: dt.datetime) -> int:
    return int(await pool.fetchval(CREATE_RUN, as_of))


@classified
async def finish_run(
    pool: asyncpg.Pool, run_id: int, state: str, due: int, published: int, error: str | None
) -> None:
    await pool.execute(FINISH_RUN, run_id, state, due, published, error)
    await pool.execute(COMPLETE_EMPTY_RUN, run_id)


# From the run's summary rows (migration 0009), not a count over its million jobs.
RUN_COUNTS = """
SELECT key AS state, n FROM run_summary_totals WHERE run_id = $1 AND kind = 'state'
"""

# Appended deltas into the summary rows (a no-op while another caller folds).
FOLD_SUMMARIES = "SELECT billq_fold_run_summaries()"

LATEST_RUN = "SELECT id FROM billing_runs ORDER BY id DESC LIMIT 1"

GET_RUN = """
SELECT id, as_of, started_at, finished_at, state, due, published, error
  FROM billing_runs WHERE id = $1
"""

# A published run completes by itself once none of its jobs is open.
SETTLE_RUN = """
UPDATE billing_runs r
   SET state = CASE WHEN EXISTS (SELECT 1 FROM billing_jobs j
                                  WHERE j.run_id = r.id AND j.state IN ('failed', 'dead'))
                    THEN 'completed_with_failures' ELSE 'completed' END,
       finished_at = coalesce(
           (SELECT max(finished_at) FROM billing_jobs j WHERE j.run_id = r.id), now())
 WHERE r.id = $1 AND r.state = 'published'
   -- None open, from the run's summary rows: a probe of its open jobs read all of them (a
   -- bitmap of a million right after publishing), on every status page.
   AND (SELECT coalesce(sum(s.n), 0) FROM run_summary_totals s
         WHERE s.run_id = r.id AND s.kind = 'state'
           AND s.key IN ('pending', 'published', 'processing', 'retrying')) = 0
"""

# The run's finished jobs per second over the last 10 seconds, from its per-second summary
# rows (a primary-key range). Read from billing_jobs, a database without statistics chose
# (run_id, state, id) and read every ended job of the run: 990,000 entries, 340 ms a page.
RECENT_RATE = """
SELECT coalesce(sum(n), 0) / 10.0
  FROM run_summary_totals
 WHERE run_id = $1 AND kind = 'finished' AND key = '' AND attempt = 0
   AND second >= floor(extract(epoch FROM now()))::bigint - 10
   AND second < floor(extract(epoch FROM now()))::bigint
"""


async def latest_run_id(pool: asyncpg.Pool) -> int | None:
    value = await pool.fetchval(LATEST_RUN)
    return int(value) if value is not None else None


async def get_run(pool: asyncpg.Pool, run_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(GET_RUN, run_id)
    return row


async def run_counts(pool: asyncpg.Pool, run_id: int) -> dict[str, int]:
    return {r["state"]: int(r["n"]) for r in await pool.fetch(RUN_COUNTS, run_id)}


@classified
async def fold_summaries(pool: asyncpg.Pool) -> int:
    """Fold the summary deltas workers appended; figures are exact either way (readers sum
    both), folding keeps the delta table short. Returns the deltas folded."""
    return int(await pool.fetchval(FOLD_SUMMARIES) or 0)


async def settle_run(pool: asyncpg.Pool, run_id: int) -> None:
    await pool.execute(SETTLE_RUN, run_id)


async def recent_rate(pool: asyncpg.Pool, run_id: int) -> float:
    return float(await pool.fetchval(RECENT_RATE, run_id) or 0.0)


SETTLE_OPEN_RUNS = """
SELECT r.id FROM billing_runs r WHERE r.state = 'published'
"""


@classified
async def settle_open_runs(pool: asyncpg.Pool) -> None:
    """Complete every published run whose last job has ended (workers call this)."""
    for row in await pool.fetch(SETTLE_OPEN_RUNS):
        await pool.execute(SETTLE_RUN, row["id"])


SCHEDULE_RUN = "INSERT INTO billing_runs (as_of, state) VALUES ($1, 'scheduled') RETURNING id"

START_DUE_SCHEDULED = """
UPDATE billing_runs SET state = 'running', started_at = now()
 WHERE state = 'scheduled' AND as_of <= now()
RETURNING id, as_of
"""


async def schedule_run(pool: asyncpg.Pool, at: dt.datetime) -> int:
    return int(await pool.fetchval(SCHEDULE_RUN, at))


@classified
async def start_due_scheduled(pool: asyncpg.Pool) -> list[tuple[int, dt.datetime]]:
    rows = await pool.fetch(START_DUE_SCHEDULED)
    return sorted((int(r["id"]), r["as_of"]) for r in rows)
