"""The run-summary triggers cost one index probe per changed row, whatever the table holds.

Mid-run, billing_jobs has no statistics (autovacuum has not caught up with a run that grew
from nothing). A 1,000,000-account soak then stalled: the jobs trigger read every first
decline of every run on each group commit, and the accounts trigger scanned every job on
each status change. Counted in tuples read, not timed: the counts do not depend on load.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest
from testkit import claimed_jobs, seed

from shared.config import Settings
from shared.db import jobs_repo
from shared.db.pool import connect, create_pool

pytestmark = pytest.mark.integration

HISTORY = 20_000  # first declines of an earlier run: what a bad plan reads
BATCH = 256
PER_ROW = 8  # tuples read per changed row, all statements and triggers included

TUPLES_READ = """
SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
  FROM pg_stat_user_tables WHERE relname = 'billing_jobs'
"""


async def _tuples_read(db: asyncpg.Connection, counter: str) -> int:
    await db.execute("SELECT pg_stat_clear_snapshot()")
    return int(await db.fetchval(counter))


async def _counted(
    db: asyncpg.Connection, sql: str, *args: object, counter: str = TUPLES_READ
) -> int:
    """billing_jobs tuples read (``counter``) by one statement and the triggers it fires."""
    # What earlier statements read is flushed first, or it would land in this count.
    await db.execute("SELECT pg_stat_force_next_flush()")
    await db.execute("SELECT 1")
    before = await _tuples_read(db, counter)
    await db.execute("SELECT pg_stat_force_next_flush()")
    await db.execute(sql, *args)
    await db.execute("SELECT pg_stat_force_next_flush()")
    await db.execute("SELECT 1")  # the flush happens once the backend is idle again
    return await _tuples_read(db, counter) - before


async def _history(db: asyncpg.Connection) -> list[asyncpg.Record]:
    """HISTORY accounts declined last month, and this month's batch being charged."""
    await seed(db, HISTORY)
    await db.execute("ALTER TABLE billing_jobs SET (autovacuum_enabled = off)")
    last, this = [
        await db.fetchval("INSERT INTO billing_runs (as_of) VALUES ($1) RETURNING id", at)
        for at in (
            dt.datetime(2026, 2, 1, 12, tzinfo=dt.UTC),
            dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC),
        )
    ]
    await db.execute(
        """
        INSERT INTO billing_jobs (run_id, account_id, period_start, period_end, idempotency_key,
                                  amount_cents, currency, payment_method, state, finished_at)
        SELECT $1, i, '2026-02-01', '2026-03-01', 'billq_' || i || '_2026-02-01', 1000, 'USD',
               'pm_card_visa', 'failed', now() - interval '20 days'
          FROM generate_series(1, $2::int) AS i
        """,
        last,
        HISTORY,
    )
    return await claimed_jobs(db, this, HISTORY - BATCH + 1, HISTORY)


async def test_a_group_commit_reads_its_own_jobs_not_the_history(db: asyncpg.Connection) -> None:
    batch = await _history(db)
    read = await _counted(
        db,
        jobs_repo.RECORD_SUCCESSES,
        [r["id"] for r in batch],
        [r["attempts"] for r in batch],
        [f"ch_{r['id']}" for r in batch],
    )
    assert await db.fetchval("SELECT count(*) FROM charges") == BATCH
    assert read < PER_ROW * BATCH, f"{read} billing_jobs tuples read for {BATCH} commits"


INDEX_TUPLES_READ = """
SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes WHERE relname = 'billing_jobs'
"""


async def _assert_records_read_few_index_entries(
    db: asyncpg.Connection, batch: list[asyncpg.Record]
) -> None:
    """Record ``batch`` as charged in one group commit: a few index entries per row."""
    read = await _counted(
        db,
        jobs_repo.RECORD_SUCCESSES,
        [r["id"] for r in batch],
        [r["attempts"] for r in batch],
        [f"ch_{r['id']}" for r in batch],
        counter=INDEX_TUPLES_READ,
    )
    assert await db.fetchval("SELECT count(*) FROM charges") == BATCH
    assert read < PER_ROW * BATCH, f"{read} billing_jobs index entries read for {BATCH} commits"


async def test_a_group_commit_reads_no_index_entries_of_the_history(
    db: asyncpg.Connection,
) -> None:
    # The double-charge check once read the whole partial index billing_jobs_period_key
    # (every period job, and every dead version of one) to intersect it with the open jobs:
    # few heap tuples, but index entries in proportion to the table on every group commit.
    batch = await _history(db)
    await _assert_records_read_few_index_entries(db, batch)


async def test_a_group_commit_reads_no_index_entries_of_jobs_processed_before(
    db: asyncpg.Connection,
) -> None:
    # Mid-run without vacuum: every job processed so far left a dead 'processing' version,
    # and its entry in billing_jobs_open_idx. Reading the jobs by state alone reads them all.
    batch = await _history(db)
    await db.execute("UPDATE billing_jobs SET state = 'processing' WHERE state = 'failed'")
    await db.execute(
        "UPDATE billing_jobs SET state = 'failed' WHERE id <> ALL($1::bigint[])",
        [r["id"] for r in batch],
    )
    await _assert_records_read_few_index_entries(db, batch)


async def test_a_group_commit_of_dunning_retries_reads_one_first_decline_per_retry(
    db: asyncpg.Connection,
) -> None:
    # The priority lane's commits: each retry's row looks up its period's first decline
    # (the "retry" summary), and the recovered account's status change moves that decline.
    await _history(db)
    await db.execute("UPDATE accounts SET status = 'past_due' WHERE id <= $1", BATCH)
    retries = list(
        await db.fetch(
            """
            INSERT INTO billing_jobs (run_id, account_id, period_start, period_end,
                                      idempotency_key, dunning_attempt, amount_cents, currency,
                                      payment_method, state, attempts, locked_by, locked_until,
                                      started_at)
            SELECT o.run_id, o.account_id, o.period_start, o.period_end,
                   o.idempotency_key || '_retry1', 1, 1000, 'USD', 'pm_card_visa',
                   'processing', 1, 'w', now() + interval '60 s', now()
              FROM billing_jobs o
             WHERE o.dunning_attempt = 0 AND o.state = 'failed' AND o.account_id <= $1
            RETURNING id, attempts
            """,
            BATCH,
        )
    )
    assert len(retries) == BATCH

    read = await _counted(
        db,
        jobs_repo.RECORD_SUCCESSES,
        [r["id"] for r in retries],
        [r["attempts"] for r in retries],
        [f"ch_{r['id']}" for r in retries],
    )

    recovered = await db.fetchval(
        "SELECT n FROM run_summary_totals WHERE kind = 'retry' AND key = 'succeeded'"
    )
    assert recovered == BATCH
    assert read <= PER_ROW * BATCH, f"{read} billing_jobs tuples read for {BATCH} retries"


async def test_a_status_change_reads_the_accounts_own_jobs_not_every_job(
    db: asyncpg.Connection,
) -> None:
    await _history(db)
    read = await _counted(
        db,
        "UPDATE accounts SET status = 'past_due' WHERE id BETWEEN 1 AND $1",
        BATCH,
    )
    # Each of those accounts' first declines moved to the new status.
    moved = await db.fetchval(
        "SELECT n FROM run_summary_totals WHERE kind = 'dunning' AND key = 'past_due'"
    )
    assert moved == BATCH
    assert read < PER_ROW * BATCH, f"{read} billing_jobs tuples read for {BATCH} accounts"


async def test_billq_connections_never_jit_compile(settings: Settings) -> None:
    # A misestimated plan (no statistics yet) was JIT-compiled before it ran: ~1 s per commit.
    pool = await create_pool(settings, max_size=1)
    try:
        assert await pool.fetchval("SHOW jit") == "off"
    finally:
        await pool.close()
    conn = await connect(settings)
    try:
        assert await conn.fetchval("SHOW jit") == "off"
    finally:
        await conn.close()
