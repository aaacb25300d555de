"""Runs that settle by themselves, accounts that are blocked out loud, and catch-up pacing —
the distributor against the real Postgres and RabbitMQ (no worker: job ends are simulated in
SQL where the test is about the distributor's view of them)."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest
import testkit

from distributor.run import distribute
from shared import operations
from shared.config import Settings
from shared.db.pool import create_pool

pytestmark = pytest.mark.integration

MARCH = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


async def charge_in_sql(db: asyncpg.Connection, account_id: int) -> None:
    """What a worker's record does, for the distributor's purposes: job succeeded, advanced."""
    await db.execute(
        "UPDATE billing_jobs SET state = 'succeeded', finished_at = now()"
        " WHERE account_id = $1 AND state <> 'succeeded'",
        account_id,
    )
    await db.execute(
        "UPDATE accounts SET next_billing_at = next_billing_at + interval '1 month' WHERE id = $1",
        account_id,
    )


async def test_a_due_account_whose_period_job_died_is_reported_blocked_with_what_to_do(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await testkit.seed(db, 2)
    first = await distribute(settings, as_of=MARCH)
    dead = await db.fetchval("SELECT id FROM billing_jobs WHERE account_id = 1")
    await db.execute(
        "UPDATE billing_jobs SET state = 'dead', last_error = 'account 1 is cancelled'"
        " WHERE id = $1",
        dead,
    )
    second = await distribute(settings, as_of=MARCH)
    assert second.due == 2 and second.new_jobs == 0
    assert [b["account_id"] for b in second.blocked] == [1]
    assert f"billq jobs retry {dead}" in second.blocked[0]["reason"]
    assert "blocked=1" in second.line()
    stored = await db.fetch("SELECT * FROM run_blocked WHERE run_id = $1", second.run_id)
    assert [r["job_id"] for r in stored] == [dead]
    assert first.blocked == []


async def test_catch_up_bills_one_new_period_per_gap_however_often_distribute_runs(
    settings: Settings, db: asyncpg.Connection
) -> None:
    paced = settings.model_copy(update={"catchup_min_gap": 86400.0})
    await testkit.seed(db, 1)  # next_billing_at 2026-03-01: months behind the wall clock
    now = dt.datetime.now(dt.UTC)
    assert (await distribute(paced, as_of=now)).new_jobs == 1
    await charge_in_sql(db, 1)
    again = await distribute(paced, as_of=now)
    assert again.due == 1 and again.new_jobs == 0 and again.paced == 1
    # The same settings with pacing off bill April at once.
    assert (await distribute(settings, as_of=now)).new_jobs == 1
    periods = await db.fetch("SELECT period_start FROM billing_jobs ORDER BY period_start")
    assert [p["period_start"] for p in periods] == [dt.date(2026, 3, 1), dt.date(2026, 4, 1)]


async def test_distribute_says_how_many_periods_it_bills_ahead_of_the_wall_clock(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await testkit.seed(db, 2)
    await db.execute("UPDATE accounts SET next_billing_at = '2099-06-01T00:00:00Z' WHERE id = 2")
    summary = await distribute(settings, as_of=dt.datetime(2099, 6, 2, tzinfo=dt.UTC))
    assert summary.new_jobs == 2 and summary.future_periods == 1
    assert "1 period(s) start after now" in summary.line()


async def test_a_run_whose_distributor_died_settles_at_the_next_distribute(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await testkit.seed(db, 1)
    summary = await distribute(settings, as_of=MARCH)
    # As if the distributor had died after publishing: the run is still 'running'.
    await db.execute("UPDATE billing_runs SET state = 'running' WHERE id = $1", summary.run_id)
    await charge_in_sql(db, 1)
    later = await distribute(settings, as_of=MARCH)
    assert later.settled_runs == [summary.run_id]
    state = await db.fetchval("SELECT state FROM billing_runs WHERE id = $1", summary.run_id)
    assert state == "completed"


async def test_shards_of_one_cron_tick_without_as_of_join_one_run_that_completes(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await testkit.seed(db, 4)
    tick = dt.datetime.now(dt.UTC)
    a = await distribute(settings, as_of=tick, shard=(0, 2), explicit_as_of=False)
    b = await distribute(
        settings, as_of=tick + dt.timedelta(seconds=7), shard=(1, 2), explicit_as_of=False
    )
    assert a.run_id == b.run_id and a.as_of == b.as_of
    assert a.new_jobs + b.new_jobs == 4
    run = await testkit.fetchrow(
        db, "SELECT state, shards_done FROM billing_runs WHERE id = $1", a.run_id
    )
    assert run["state"] == "published" and run["shards_done"] == 2


async def test_retrying_a_failed_runs_dead_job_reopens_the_run(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await testkit.seed(db, 1)
    summary = await distribute(settings, as_of=MARCH)
    job = await db.fetchval("SELECT id FROM billing_jobs")
    await db.execute("UPDATE billing_jobs SET state = 'dead' WHERE id = $1", job)
    await db.execute(
        "UPDATE billing_runs SET state = 'completed_with_failures' WHERE id = $1", summary.run_id
    )
    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        state, rows = await operations.prepare_retry(pool, job)
    finally:
        await pool.close()
    assert state == "dead" and [r["id"] for r in rows] == [job]
    run = await db.fetchval("SELECT state FROM billing_runs WHERE id = $1", summary.run_id)
    assert run == "published"
