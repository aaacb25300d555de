"""The run summaries (migration 0009) against a full recount of billing_jobs and charges,
after a real pipeline: two workers committing concurrently, soft and hard declines, dunning
retries in later runs, a job retried for a transient gateway error, dead jobs, an operator's
retry and cancel, and a dead-letter replay."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
import testkit
from testkit import workers

from distributor.run import distribute
from shared import operations, views
from shared.amqp import dlq
from shared.config import Settings
from shared.db import runs_repo
from shared.db.pool import create_pool

pytestmark = pytest.mark.integration

PERIOD = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
NOW = dt.datetime.now(dt.UTC)

# What each kind of summary row must equal: the full recount over billing_jobs and charges
# (the queries the views ran before summaries existed).
RECOUNT = {
    "state": "SELECT run_id, state AS key, 0 AS attempt, 0 AS second, count(*) AS n, 0 AS amount"
    " FROM billing_jobs GROUP BY 1, 2",
    "decline": "SELECT run_id, coalesce(decline_code, last_error, 'unknown'), 0, 0, count(*), 0"
    " FROM billing_jobs WHERE state = 'failed' GROUP BY 1, 2",
    "billed": "SELECT j.run_id, c.currency::text, 0, 0, count(*), sum(c.amount_cents)"
    " FROM charges c JOIN billing_jobs j ON j.id = c.job_id GROUP BY 1, 2",
    "finished": "SELECT run_id, '', 0, floor(extract(epoch FROM finished_at))::bigint, count(*), 0"
    " FROM billing_jobs WHERE state IN ('succeeded', 'failed', 'dead', 'already_paid')"
    " AND finished_at IS NOT NULL GROUP BY 1, 4",
    "retry": """
        WITH declined AS (
            SELECT run_id, account_id, period_start FROM billing_jobs
             WHERE state = 'failed' AND dunning_attempt = 0)
        SELECT d.run_id, j.state, j.dunning_attempt, 0, count(*), 0
          FROM declined d JOIN billing_jobs j
            ON j.account_id = d.account_id AND j.period_start = d.period_start
         WHERE j.dunning_attempt > 0 GROUP BY 1, 2, 3""",
    "dunning": "SELECT j.run_id, a.status, 0, 0, count(*), 0"
    " FROM billing_jobs j JOIN accounts a ON a.id = j.account_id"
    " WHERE j.state = 'failed' AND j.dunning_attempt = 0 GROUP BY 1, 2",
}

TOTALS = """
SELECT run_id, key, attempt, second, n, amount FROM run_summary_totals WHERE kind = $1
"""


def rows(records: list[asyncpg.Record]) -> set[tuple[Any, ...]]:
    return {tuple(int(v) if not isinstance(v, str) else v for v in r) for r in records}


async def assert_summaries_equal_a_recount(db: asyncpg.Connection) -> None:
    for kind, recount in RECOUNT.items():
        expected = rows(await db.fetch(recount))
        assert rows(await db.fetch(TOTALS, kind)) == expected, kind


async def seed(db: asyncpg.Connection, ids: range) -> None:
    await testkit.seed(db, len(ids), card=card, start=ids.start)
    await db.execute("UPDATE accounts SET currency = 'EUR' WHERE id % 3 = 0")


def card(i: int) -> str:
    if i % 10 == 0:
        return "pm_card_chargeDeclinedInsufficientFunds"  # soft: dunning retries it
    if i % 25 == 1:
        return "pm_card_chargeDeclinedStolenCard"  # hard: suspended at once
    if i == 13:
        return "pm_card_chargeDeclinedProcessingError"
    return "pm_card_visa"


async def settled(db: asyncpg.Connection) -> bool:
    return not await db.fetchval(
        "SELECT count(*) FROM billing_jobs WHERE state IN ('pending','published','processing','retrying')"
    )


@pytest.fixture
def s(settings: Settings, gateway_url: str) -> Settings:
    return settings.model_copy(update={"gateway_url": gateway_url, "concurrency": 32})


async def test_the_run_summaries_equal_a_full_recount_after_a_real_pipeline_with_operators(
    s: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed(db, range(1, 301))
    pool = await create_pool(s, min_size=1, max_size=4)
    conn = await aio_pika.connect(s.amqp_url.get_secret_value())
    try:
        first_run = (await distribute(s, as_of=NOW)).run_id
        assert first_run is not None
        # Cancelled before their jobs run: the jobs die, each with a dead letter.
        await db.execute("UPDATE accounts SET status = 'cancelled' WHERE id IN (7, 8, 9)")
        async with workers(s):
            await testkit.wait_until(lambda: settled(db), timeout=90)
            await assert_summaries_equal_a_recount(db)

            # An operator brings two of them back: a replay and a retry.
            await db.execute("UPDATE accounts SET status = 'active' WHERE id IN (7, 8)")
            letters = {x.job_id: x.id for x in await dlq.read(conn, s, 100)}
            job7, job8 = [
                await db.fetchval("SELECT id FROM billing_jobs WHERE account_id = $1", a)
                for a in (7, 8)
            ]
            await operations.replay_dead_letters(pool, conn, s, {letters[job7]}, "test")
            await operations.retry_job(pool, conn, s, job8, "test")
            await testkit.wait_until(lambda: settled(db), timeout=60)

            # Dunning: some soft declines pay with a new card, the rest fail again, twice.
            await db.execute(
                "UPDATE accounts SET payment_method = 'pm_card_visa'"
                " WHERE status = 'past_due' AND id % 20 = 0"
            )
            for _ in range(2):
                retry_at = await db.fetchval(
                    "SELECT max(dunning_next_at) FROM accounts WHERE status = 'past_due'"
                )
                assert retry_at is not None
                await distribute(s, as_of=retry_at + dt.timedelta(seconds=1))
                await testkit.wait_until(lambda: settled(db), timeout=60)
                await assert_summaries_equal_a_recount(db)

        # A run nobody consumes (the next periods): an operator cancels one of its jobs.
        later = (await distribute(s, as_of=NOW)).run_id
        assert later is not None
        victim = await db.fetchval("SELECT min(id) FROM billing_jobs WHERE run_id = $1", later)
        await operations.cancel_job(pool, conn, s, victim, "test")
        # An account status change an operator makes (outside any job) moves its declines.
        await db.execute("UPDATE accounts SET status = 'cancelled' WHERE id = 26")

        # Unfolded deltas, then folded: the same figures both times.
        assert await db.fetchval("SELECT count(*) FROM run_summary_deltas") > 0
        await assert_summaries_equal_a_recount(db)
        assert await runs_repo.fold_summaries(pool) > 0
        assert await db.fetchval("SELECT count(*) FROM run_summary_deltas") == 0
        await assert_summaries_equal_a_recount(db)

        # What the pipeline went through, so the comparison above covered it.
        counts = await runs_repo.run_counts(pool, first_run)
        assert counts["failed"] > 0 and counts["dead"] >= 1 and counts["succeeded"] > 200
        assert await db.fetchval("SELECT count(*) FROM billing_jobs WHERE dunning_attempt = 2")
        assert await db.fetchval("SELECT max(replays) FROM billing_jobs") == 1
        pipeline = await views.dunning(pool, first_run)
        assert pipeline["recovered"] > 0 and pipeline["suspended"] > 0
        assert len(pipeline["retries"]) == 2
        status = await views.run_status(pool, later)
        assert status["counts"]["dead"] == 1
        assert status["counts"]["published"] == status["total"] - 1 > 0
    finally:
        await conn.close()
        await pool.close()


async def test_the_migration_backfill_equals_a_full_recount(
    s: Settings, db: asyncpg.Connection
) -> None:
    await seed(db, range(1, 61))
    async with workers(s, n=1):
        await distribute(s, as_of=NOW)
        await testkit.wait_until(lambda: settled(db), timeout=60)
    sql = (testkit.ROOT / "migrations" / "0009_run_summaries.sql").read_text()
    backfill = re.split(r"^-- Backfill", sql, flags=re.M)[1]
    await db.execute("TRUNCATE run_summaries, run_summary_deltas")
    await db.execute(backfill.split("\n", 1)[1])
    await assert_summaries_equal_a_recount(db)
