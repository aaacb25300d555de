"""No two period charges of one account cover the same day: the database refuses them.

Migration 0012 adds ``charges.period_end`` and an exclusion constraint over
[period_start, period_end); these tests hold the constraint, the migration's handling of
existing rows, and the distributor's periods after an anchor change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest
import testkit

from distributor.run import distribute
from shared.billing.accounts import AccountRow
from shared.config import Settings
from shared.db import accounts_repo
from shared.db.jobs_repo import record_successes
from shared.db.migrations import load_migrations
from shared.db.pool import create_pool

pytestmark = pytest.mark.integration

D = dt.date
OVERLAPS = 12  # migrations/0012_no_overlapping_periods.sql


async def _world(db: asyncpg.Connection, periods: list[tuple[D, D]]) -> None:
    """Account 1 with one succeeded job and its charge per period."""
    await db.execute(
        "INSERT INTO accounts (id, name, email, amount_cents, currency, billing_interval,"
        " billing_anchor_day, next_billing_at, status, payment_method)"
        " VALUES (1, 'n', 'n@example.com', 1999, 'USD', 'month', 1, '2026-03-01', 'active',"
        " 'pm_card_visa')"
    )
    await db.execute("INSERT INTO billing_runs (as_of) VALUES (now())")
    for n, (start, end) in enumerate(periods, start=1):
        await _world_job(db, n, start, end)


async def _charge(db: asyncpg.Connection, job: int, start: D, end: D | None = None) -> None:
    """A charge row as before 0012 (no ``end``) or after it."""
    args = [job, start, f"billq_1_{start.isoformat()}", f"pi_{job}"]
    await db.execute(
        "INSERT INTO charges (job_id, account_id, period_start, amount_cents, currency,"
        " idempotency_key, gateway_charge_id" + (", period_end" if end else "") + ")"
        " VALUES ($1, 1, $2, 1999, 'USD', $3, $4" + (", $5" if end else "") + ")",
        *([*args, end] if end else args),
    )


@pytest.fixture
async def before_0012() -> AsyncIterator[asyncpg.Connection]:
    """A database migrated up to, not including, 0012."""
    name = testkit.unique("billq_m")
    admin = await asyncpg.connect(testkit.PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(testkit.db_url(name))
    try:
        for m in load_migrations():
            if m.version < OVERLAPS:
                await conn.execute(m.sql)
        yield conn
    finally:
        await conn.close()
        await testkit.drop_database(name)


def _0012() -> str:
    return next(m.sql for m in load_migrations() if m.version == OVERLAPS)


async def test_the_database_refuses_a_second_charge_for_days_already_paid(
    db: asyncpg.Connection,
) -> None:
    march, shifted, april = (
        (D(2026, 3, 1), D(2026, 4, 1)),
        (D(2026, 3, 15), D(2026, 5, 15)),
        (
            D(2026, 4, 1),
            D(2026, 5, 15),
        ),
    )
    await _world(db, [march, shifted, april])
    await _charge(db, 1, *march)

    with pytest.raises(asyncpg.ExclusionViolationError):
        await _charge(db, 2, *shifted)
    await _charge(db, 3, *april)  # starts where March ends: no day twice

    assert await db.fetchval("SELECT count(*) FROM charges") == 2


async def test_the_migration_gives_existing_charges_their_job_s_period_end(
    before_0012: asyncpg.Connection,
) -> None:
    db = before_0012
    await _world(db, [(D(2026, 3, 1), D(2026, 4, 1)), (D(2026, 4, 1), D(2026, 5, 15))])
    await _charge(db, 1, D(2026, 3, 1))
    await _charge(db, 2, D(2026, 4, 1))

    await db.execute(_0012())

    rows = await db.fetch("SELECT period_start, period_end FROM charges ORDER BY id")
    assert [(r["period_start"], r["period_end"]) for r in rows] == [
        (D(2026, 3, 1), D(2026, 4, 1)),
        (D(2026, 4, 1), D(2026, 5, 15)),
    ]
    await _world_job(db, 3, D(2026, 5, 1), D(2026, 6, 1))
    with pytest.raises(asyncpg.ExclusionViolationError):
        await _charge(db, 3, D(2026, 5, 1), D(2026, 6, 1))


async def _world_job(db: asyncpg.Connection, job: int, start: D, end: D) -> None:
    run = await db.fetchval("SELECT min(id) FROM billing_runs")
    await db.execute(
        "INSERT INTO billing_jobs (id, run_id, account_id, period_start, period_end,"
        " idempotency_key, amount_cents, currency, state)"
        " VALUES ($1, $2, 1, $3, $4, $5, 1999, 'USD', 'succeeded')",
        job,
        run,
        start,
        end,
        f"billq_1_{start.isoformat()}",
    )


async def test_the_migration_stops_naming_the_charges_when_existing_rows_overlap(
    before_0012: asyncpg.Connection,
) -> None:
    db = before_0012
    await _world(db, [(D(2026, 3, 1), D(2026, 4, 1)), (D(2026, 3, 15), D(2026, 5, 15))])
    await _charge(db, 1, D(2026, 3, 1))
    await _charge(db, 2, D(2026, 3, 15))

    with pytest.raises(asyncpg.RaiseError) as refused:
        async with db.transaction():  # as `billq migrate` applies each file
            await db.execute(_0012())

    assert "pi_1 [2026-03-01, 2026-04-01) and pi_2 [2026-03-15, 2026-05-15)" in str(refused.value)
    assert "refund one" in str(refused.value)
    columns = await db.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'charges'"
    )
    assert "period_end" not in {c["column_name"] for c in columns}  # nothing changed


async def test_one_off_charges_neither_stop_the_migration_nor_meet_the_constraint(
    before_0012: asyncpg.Connection,
) -> None:
    """A one-off charge (kind 'oneoff') covers no period, whatever its dates."""
    db = before_0012
    await _world(db, [(D(2026, 3, 1), D(2026, 4, 1)), (D(2026, 3, 15), D(2026, 5, 15))])
    await _world_job(db, 3, D(2026, 3, 20), D(2026, 3, 21))
    await _world_job(db, 4, D(2026, 3, 21), D(2026, 3, 22))
    await db.execute("UPDATE billing_jobs SET kind = 'oneoff' WHERE id IN (3, 4)")
    await _charge(db, 1, D(2026, 3, 1))
    await _charge(db, 3, D(2026, 3, 20))
    await db.execute("UPDATE charges SET kind = 'oneoff' WHERE job_id = 3")

    await db.execute(_0012())  # the existing one-off inside March is no overlap

    await db.execute(
        "INSERT INTO charges (job_id, account_id, period_start, period_end, amount_cents,"
        " currency, idempotency_key, gateway_charge_id, kind)"
        " VALUES (4, 1, '2026-03-21', '2026-03-22', 500, 'USD', 'oneoff_4', 'pi_4', 'oneoff')"
    )
    with pytest.raises(asyncpg.ExclusionViolationError):
        await _charge(db, 2, D(2026, 3, 15), D(2026, 5, 15))


def _account(anchor: int) -> AccountRow:
    return AccountRow(
        id=1,
        name="c1",
        email="c1@example.com",
        amount_cents=1999,
        currency="USD",
        billing_interval="month",
        billing_anchor_day=anchor,
        next_billing_at=dt.datetime(2026, 2, 28, tzinfo=dt.UTC),
        status="active",
        payment_method="pm_card_visa",
        gateway_customer="cus_1",
    )


async def _import(db: asyncpg.Connection, row: AccountRow) -> None:
    async with db.transaction():
        await accounts_repo.import_rows(db, [row], today=D(2026, 2, 1))


async def test_after_an_anchor_change_the_next_period_starts_where_the_paid_one_ended(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """Anchor 28 → 1 after Feb 28..Mar 28 was paid: the next period is Mar 28..May 1, one
    price for a month and four days — never a four-day period charged in full, never a
    period that starts back on Mar 1."""
    await _import(db, _account(28))
    await distribute(settings, as_of=dt.datetime(2026, 2, 28, 12, tzinfo=dt.UTC))
    job = await testkit.fetchrow(db, "SELECT id, period_end, idempotency_key FROM billing_jobs")
    assert job["period_end"] == D(2026, 3, 28)
    # What a worker's record does after the gateway took the charge.
    await db.execute(
        "UPDATE billing_jobs SET state = 'processing', attempts = 1 WHERE id = $1", job["id"]
    )

    pool = await create_pool(settings, min_size=1, max_size=1)
    try:
        assert await record_successes(pool, [(job["id"], 1, "pi_feb")]) == {job["id"]: True}
    finally:
        await pool.close()

    await _import(db, _account(1))
    await distribute(settings, as_of=dt.datetime(2026, 3, 28, 12, tzinfo=dt.UTC))

    periods = await db.fetch("SELECT period_start, period_end FROM billing_jobs ORDER BY id")
    assert [(p["period_start"], p["period_end"]) for p in periods] == [
        (D(2026, 2, 28), D(2026, 3, 28)),
        (D(2026, 3, 28), D(2026, 5, 1)),
    ]
