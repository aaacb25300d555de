"""Dunning, invoices, run lifecycle and reports against the real services.

The worker runs in-process (the same ``run_worker`` the CLI runs) so the test can drive
the clock through ``--as-of`` and look at the database between steps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest
import testkit
from testkit import workers

from distributor.run import distribute
from shared.config import Settings
from shared.db import accounts_repo, billing_repo, runs_repo
from shared.db.pool import create_pool

pytestmark = pytest.mark.integration

PERIOD = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
NOW = dt.datetime.now(dt.UTC)


async def seed(db: asyncpg.Connection, ids: range, card: str = "pm_card_visa") -> None:
    await db.copy_records_to_table(
        "accounts",
        records=[
            (
                i,
                f"c{i}",
                f"c{i}@example.com",
                2500,
                "EUR",
                "month",
                1,
                PERIOD,
                "active",
                card,
                f"cus_{i}",
            )
            for i in ids
        ],
        columns=(
            "id",
            "name",
            "email",
            "amount_cents",
            "currency",
            "billing_interval",
            "billing_anchor_day",
            "next_billing_at",
            "status",
            "payment_method",
            "gateway_customer",
        ),
    )


async def settle(db: asyncpg.Connection) -> None:
    async def done() -> bool:
        return not await db.fetchval(
            "SELECT count(*) FROM billing_jobs WHERE state NOT IN ('succeeded','failed','dead','already_paid')"
        )

    await testkit.wait_until(done, timeout=60)


async def bill(settings: Settings, db: asyncpg.Connection, as_of: dt.datetime) -> dict[str, int]:
    summary = await distribute(settings, as_of=as_of)
    await settle(db)
    return {"due": summary.due, "published": summary.published}


@pytest.fixture
def s(settings: Settings, gateway_url: str) -> Settings:
    return settings.model_copy(update={"gateway_url": gateway_url, "concurrency": 16})


async def test_a_soft_decline_is_retried_on_schedule_and_then_paid_once(
    s: Settings, db: asyncpg.Connection
) -> None:
    await seed(db, range(1, 2), card="pm_card_chargeDeclinedInsufficientFunds")
    async with workers(s):
        assert (await bill(s, db, NOW))["published"] == 1
        acct = await testkit.fetchrow(db, "SELECT * FROM accounts WHERE id = 1")
        assert acct["status"] == "past_due" and acct["dunning_attempt"] == 1
        assert acct["next_billing_at"] == PERIOD  # the period is still unpaid
        retry_at = acct["dunning_next_at"]
        assert (
            dt.timedelta(days=3) - dt.timedelta(minutes=5)
            < retry_at - acct["first_declined_at"]
            < dt.timedelta(days=3, minutes=5)
        )
        open_invoice = await testkit.fetchrow(db, "SELECT * FROM invoices WHERE account_id = 1")
        assert open_invoice["status"] == "open"

        # Not yet time: nothing is published.
        assert (await bill(s, db, NOW + dt.timedelta(days=2)))["published"] == 0
        # The customer's card works again; the scheduled retry uses its own key.
        await db.execute("UPDATE accounts SET payment_method = 'pm_card_visa' WHERE id = 1")
        assert (await bill(s, db, retry_at + dt.timedelta(minutes=1)))["published"] == 1

    keys = [
        r["idempotency_key"]
        for r in await db.fetch("SELECT idempotency_key FROM billing_jobs ORDER BY id")
    ]
    assert keys == ["billq_1_2026-03-01", "billq_1_2026-03-01_d1"]
    charges = await db.fetch("SELECT * FROM charges")
    assert [c["idempotency_key"] for c in charges] == ["billq_1_2026-03-01_d1"]
    acct = await testkit.fetchrow(db, "SELECT * FROM accounts WHERE id = 1")
    assert acct["status"] == "active" and acct["dunning_next_at"] is None
    assert acct["next_billing_at"] == dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    paid = await testkit.fetchrow(db, "SELECT * FROM invoices WHERE account_id = 1")
    assert paid["number"] == open_invoice["number"] and paid["status"] == "paid"
    assert paid["gateway_charge_id"] == charges[0]["gateway_charge_id"]
    kinds = [r["kind"] for r in await accounts_repo.events(await _pool(s), 1)]
    assert kinds == ["declined", "reactivated"]


_POOLS: list[asyncpg.Pool] = []


async def _pool(s: Settings) -> asyncpg.Pool:
    pool = await create_pool(s)
    _POOLS.append(pool)
    return pool


@pytest.fixture(autouse=True)
async def _close_pools() -> AsyncIterator[None]:
    yield
    while _POOLS:
        await _POOLS.pop().close()


async def test_a_hard_decline_stops_retries_at_once(s: Settings, db: asyncpg.Connection) -> None:
    await seed(db, range(1, 2), card="pm_card_chargeDeclinedStolenCard")
    async with workers(s):
        await bill(s, db, NOW)
        acct = await testkit.fetchrow(db, "SELECT * FROM accounts WHERE id = 1")
        assert acct["status"] == "suspended" and acct["dunning_next_at"] is None
        assert (await bill(s, db, NOW + dt.timedelta(days=30)))["published"] == 0
    assert await db.fetchval("SELECT count(*) FROM billing_jobs") == 1
    assert await db.fetchval("SELECT status FROM invoices") == "uncollectible"
    assert await db.fetchval("SELECT decline_code FROM billing_jobs") == "stolen_card"


async def test_the_last_failed_retry_suspends_and_a_new_card_reactivates(
    s: Settings, db: asyncpg.Connection
) -> None:
    await seed(db, range(1, 2), card="pm_card_chargeDeclinedInsufficientFunds")
    async with workers(s):
        await bill(s, db, NOW)
        for _ in range(3):
            retry_at = await db.fetchval("SELECT dunning_next_at FROM accounts WHERE id = 1")
            assert (await bill(s, db, retry_at + dt.timedelta(seconds=1)))["published"] == 1
        acct = await testkit.fetchrow(db, "SELECT * FROM accounts WHERE id = 1")
        assert acct["status"] == "suspended"
        assert await db.fetchval("SELECT status FROM invoices") == "uncollectible"
        assert (await bill(s, db, NOW + dt.timedelta(days=60)))["published"] == 0

        pool = await _pool(s)
        changed = await accounts_repo.update_payment_method(pool, 1, "pm_card_visa")
        assert changed is not None and changed["after"] == "past_due"
        assert (await bill(s, db, dt.datetime.now(dt.UTC)))["published"] == 1
    assert await db.fetchval("SELECT status FROM accounts WHERE id = 1") == "active"
    assert await db.fetchval("SELECT count(*) FROM charges") == 1
    assert await db.fetchval("SELECT status FROM invoices") == "paid"
    assert await db.fetchval("SELECT count(*) FROM billing_jobs") == 5
    kinds = [r["kind"] for r in await accounts_repo.events(pool, 1)]
    assert kinds == [
        "declined",
        "declined",
        "declined",
        "suspended",
        "payment_method_updated",
        "reactivated",
    ]


async def test_invoice_numbers_are_gap_free_under_concurrent_workers_and_the_run_completes_itself(
    s: Settings, db: asyncpg.Connection
) -> None:
    await seed(db, range(1, 111))
    await seed(db, range(200, 210), card="pm_card_chargeDeclined")
    async with workers(s, n=3):
        summary = await distribute(s, as_of=NOW)
        await settle(db)

        async def run_completed() -> bool:
            state = await db.fetchval(
                "SELECT state FROM billing_runs WHERE id = $1", summary.run_id
            )
            return bool(state == "completed_with_failures")

        # Nobody calls `status`: the workers' heartbeat loop completes the run.
        await testkit.wait_until(run_completed, timeout=20)
    numbers = sorted(r["number"] for r in await db.fetch("SELECT number FROM invoices"))
    year = dt.datetime.now(dt.UTC).year
    assert numbers == [f"{year}-{n:06d}" for n in range(1, 121)]
    assert await db.fetchval("SELECT count(*) FROM invoices WHERE status = 'paid'") == 110
    assert await db.fetchval("SELECT count(*) FROM invoices WHERE status = 'open'") == 10


async def test_the_report_totals_equal_the_sum_of_the_charges(
    s: Settings, db: asyncpg.Connection
) -> None:
    await seed(db, range(1, 31))
    await seed(db, range(100, 104), card="pm_card_chargeDeclinedExpiredCard")
    await db.execute("UPDATE accounts SET currency = 'USD', amount_cents = 999 WHERE id <= 10")
    async with workers(s):
        summary = await distribute(s, as_of=NOW)
        await settle(db)
    assert summary.run_id is not None
    pool = await _pool(s)
    report = await billing_repo.report(pool, summary.run_id)
    billed = {r["currency"]: r["amount_cents"] for r in report["billed"]}
    expected = {
        r["currency"]: r["sum"]
        for r in await db.fetch("SELECT currency, sum(amount_cents) FROM charges GROUP BY currency")
    }
    assert billed == expected == {"USD": 9990, "EUR": 20 * 2500}
    assert [(r["reason"], r["jobs"]) for r in report["declines"]] == [("expired_card", 4)]
    assert report["dead"] == []
    await runs_repo.settle_run(pool, summary.run_id)
    run = await runs_repo.get_run(pool, summary.run_id)
    assert run is not None and run["state"] == "completed_with_failures"


async def test_a_scheduled_run_is_performed_by_the_first_distribute_at_or_after_its_time(
    s: Settings, db: asyncpg.Connection
) -> None:
    from distributor.run import schedule

    await seed(db, range(1, 6))
    later = await schedule(s, NOW + dt.timedelta(days=1))
    past = await schedule(s, NOW - dt.timedelta(minutes=1))
    summary = await distribute(s, as_of=NOW - dt.timedelta(days=365))  # nothing due then
    assert summary.scheduled_runs == [past.run_id]
    assert summary.published == 0
    states = {r["id"]: r["state"] for r in await db.fetch("SELECT id, state FROM billing_runs")}
    assert states[later.run_id] == "scheduled"
    assert states[past.run_id] == "published"
    assert (
        await db.fetchval("SELECT count(*) FROM billing_jobs WHERE run_id = $1", past.run_id) == 5
    )


async def test_a_job_out_of_attempts_after_unknown_outcomes_is_recorded_from_the_gateway(
    settings: Settings, db: asyncpg.Connection, tmp_path: object
) -> None:
    from pathlib import Path

    # Every call stores the charge and never answers: each attempt ends "outcome unknown".
    with testkit.sandbox_gateway(Path(str(tmp_path)), "--timeout-rate", "1") as url:
        s = settings.model_copy(
            update={"gateway_url": url, "gateway_timeout": 1.0, "max_attempts": 1}
        )
        await seed(db, range(1, 4))
        async with workers(s):
            await bill(s, db, NOW)
        assert len(testkit.ledger(url)) == 3
    states = [r["state"] for r in await db.fetch("SELECT state FROM billing_jobs")]
    assert states == ["succeeded"] * 3  # not dead: the gateway had charged them
    assert await db.fetchval("SELECT count(*) FROM charges") == 3
