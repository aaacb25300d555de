"""Bad data has a defined outcome: refused at the door, or the job dies with its reason —
never a crash, never a silent drop, never a charge."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
import testkit
from testkit import all_terminal, assert_charged_once, distribute, seed

from shared.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def test_zero_or_negative_amounts_and_malformed_currencies_are_refused_by_the_schema(
    db: asyncpg.Connection,
) -> None:
    for amount, currency in ((0, "USD"), (-100, "USD"), (100, "usd"), (100, "US")):
        with pytest.raises(asyncpg.CheckViolationError):
            await db.execute(
                "INSERT INTO accounts (id, name, email, amount_cents, currency, billing_interval,"
                " billing_anchor_day, next_billing_at, payment_method)"
                " VALUES (1, 'a', 'a@example.com', $1, $2, 'month', 1, now(), 'pm_card_visa')",
                amount,
                currency,
            )


async def test_unknown_currency_deleted_and_cancelled_accounts_end_dead_with_their_reason(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 6)
    await db.execute("UPDATE accounts SET currency = 'XXX' WHERE id = 1")  # not ISO 4217
    distribute(tmp_env)
    await db.execute("DELETE FROM accounts WHERE id = 2")  # deleted after distribution
    await db.execute("UPDATE accounts SET status = 'cancelled' WHERE id = 3")
    worker = testkit.spawn("worker", env=tmp_env, log=tmp_path / "w.log")
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)
        assert worker.poll() is None
    finally:
        assert testkit.stop_process(worker) == 0
    dead = {
        r["account_id"]: r["last_error"]
        for r in await db.fetch(
            "SELECT account_id, last_error FROM billing_jobs WHERE state = 'dead'"
        )
    }
    assert set(dead) == {1, 2, 3}
    assert "currency" in dead[1].lower()
    assert "account 2 does not exist" in dead[2]
    assert "account 3 is cancelled" in dead[3]
    letters = {
        str(m.headers["x-billq-error-class"]) for m in await testkit.get_dead_letters(settings)
    }
    assert letters == {"GatewayRejected", "UnknownJob", "AccountNotBillable"}
    await assert_charged_once(db, gateway_url, settings, expect_charged=3)
