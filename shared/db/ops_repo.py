"""Operator actions on jobs: list, retry, cancel, revive after a dead-letter replay."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from shared.billing.jobs import JOB_STATES, OPEN_STATES

JOB_COLUMNS = """id, kind, run_id, account_id, period_start, idempotency_key, state, attempts,
       last_error, locked_by, created_at, finished_at"""

# Newest first, one page at a time: ``$2`` is the last id of the previous page (keyset), so a
# page deep into a million-job run costs what the first one does. Each filter has its own
# statement, shaped so that whatever the statistics (none on a database autovacuum has not
# analyzed) and whether Postgres plans it generic or custom, it reads about one page of
# index entries: a catch-all ``($n IS NULL OR col = $n)`` left the planner a backward scan
# of the primary key filtering every job (all 1,040,000 of them for /jobs?account=20).
NO_PAGE_END = 2**63 - 1

# Every job: the primary key, backwards.
LIST_ALL = f"""
SELECT {JOB_COLUMNS} FROM billing_jobs
 WHERE id < coalesce($2::bigint, {NO_PAGE_END})
 ORDER BY id DESC LIMIT $1
"""

# One state: its (state, id) partial index, open (billing_jobs_open_idx) or ended
# (billing_jobs_ended_idx, migration 0017); the IN list proves the index's predicate.
# Formatted with one of the two lists below, never with input.
#
# The order is (state, id), and the state is matched as the range [s, s], not by = (which
# would make Postgres drop it from the order as a constant): only a state index gives that
# order, so a page is always read from one (see IN_INDEX_ORDER). Ordered by id alone, an
# analyzed database took the primary key backwards, filtering (right while the statistics
# say the state is common; a scan of the whole run when they are out of date or the state is
# rare in it: 800 ms a page of /jobs?run=1).
LIST_STATE = f"""
SELECT j.* FROM unnest(ARRAY[$3::text]) AS s(state)
 CROSS JOIN LATERAL (
    SELECT {JOB_COLUMNS} FROM billing_jobs
     WHERE state BETWEEN s.state AND s.state AND state IN ({{states}})
       AND id < coalesce($2::bigint, {NO_PAGE_END})
     ORDER BY state DESC, id DESC LIMIT $1) j
"""
OPEN_LIST = ", ".join(f"'{s}'" for s in OPEN_STATES)
ENDED_LIST = ", ".join(f"'{s}'" for s in JOB_STATES if s not in OPEN_STATES)

# A run (and a state, or each of them): (run_id, state, id) gives each state's newest page in
# id order (the state as a range, as above); the pages merged are the run's newest page,
# whichever states it holds.
LIST_RUN = f"""
SELECT j.* FROM unnest($4::text[]) AS s(state)
 CROSS JOIN LATERAL (
    SELECT {JOB_COLUMNS} FROM billing_jobs
     WHERE run_id = $3 AND state BETWEEN s.state AND s.state
       AND id < coalesce($2::bigint, {NO_PAGE_END})
     ORDER BY state DESC, id DESC LIMIT $1) j
 ORDER BY j.id DESC LIMIT $1
"""

# An account (and a run or state): its few jobs through its keys, period jobs by
# billing_jobs_period_key and the other kinds by billing_jobs_account_other_idx; the
# filters and the order apply to those only.
LIST_ACCOUNT = f"""
WITH mine AS MATERIALIZED (
    SELECT {JOB_COLUMNS} FROM billing_jobs WHERE account_id = $3 AND kind = 'period'
    UNION ALL
    SELECT {JOB_COLUMNS} FROM billing_jobs WHERE account_id = $3 AND kind <> 'period'
)
SELECT * FROM mine
 WHERE ($4::text IS NULL OR state = $4) AND ($5::bigint IS NULL OR run_id = $5)
   AND id < coalesce($2::bigint, {NO_PAGE_END})
 ORDER BY id DESC LIMIT $1
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

# Open jobs: of runs from their summary rows (a run only completes with none open, and a
# retry reopens it), of no run (one-off and refund jobs) from (run_id, state, id). Counting
# billing_jobs_open_idx read every open job: a whole run's million right after publishing.
OPEN_COUNT = """
SELECT (SELECT coalesce(sum(t.n), 0)
          FROM billing_runs r CROSS JOIN LATERAL (
               SELECT sum(s.n) AS n FROM run_summary_totals s
                WHERE s.run_id = r.id AND s.kind = 'state'
                  AND s.key IN ('pending', 'published', 'processing', 'retrying')) t
         WHERE r.state NOT IN ('completed', 'completed_with_failures'))
     + (SELECT count(*) FROM billing_jobs
         WHERE run_id IS NULL AND state IN ('pending', 'published', 'processing', 'retrying'))
"""

# Both bounds: without statistics Postgres guesses a third of the table for a one-sided
# range (and scanned it all), a small share for a two-sided one (billing_jobs_finished_idx).
RECENT_RATE = """
SELECT count(*) / $1::float FROM billing_jobs
 WHERE finished_at > now() - make_interval(secs => $1)
   AND finished_at <= now() + interval '1 hour'
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


def list_query(page: JobsPage) -> tuple[str, list[object]]:
    """The statement and arguments that list ``page`` (see LIST_ALL and the others)."""
    head: list[object] = [page.limit, page.before]
    if page.account is not None:
        return LIST_ACCOUNT, [*head, page.account, page.state, page.run]
    if page.run is not None:
        states = [page.state] if page.state is not None else list(JOB_STATES)
        return LIST_RUN, [*head, page.run, states]
    if page.state is not None:
        if page.state not in JOB_STATES:
            raise ValueError(f"not a job state: {page.state!r}")
        listed = OPEN_LIST if page.state in OPEN_STATES else ENDED_LIST
        return LIST_STATE.format(states=listed), [*head, page.state]
    return LIST_ALL, head


# A page is read in index order and stops at its LIMIT. Postgres' other choice, a bitmap of
# every matching entry then a sort, is the cheaper one only when few jobs match, and it
# believes few do whenever its statistics are missing or older than the run (a run grows
# from nothing to a million jobs between two ANALYZEs): /jobs?state=published then read all
# of a run's published jobs for each page. (A plan with a sort left in, as the account's
# does, costs past jit_above_cost: jit off, or compiling it takes 150 ms.)
IN_INDEX_ORDER = (
    "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off; SET LOCAL jit = off"
)


async def list_jobs(pool: asyncpg.Pool, page: JobsPage) -> list[asyncpg.Record]:
    sql, args = list_query(page)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(IN_INDEX_ORDER)
        return list(await conn.fetch(sql, *args))


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
