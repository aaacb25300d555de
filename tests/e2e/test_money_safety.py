"""Money safety against operators: replay, retry, cancel, a card update — each path a real
CLI command, a real worker and the sandbox gateway. One gate decides whether money moves.

Each test reproduces a way an earlier billq charged a period twice or took money it never
recorded (the money-safety issue's items 1-5); they fail on the code before the gate.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import testkit
from testkit import all_terminal, distribute, seed

from shared.config import Settings
from shared.gateway.port import Charged, ChargeRequest, charge_metadata
from shared.gateway.sandbox import SandboxGateway

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PERIOD = dt.date(2026, 3, 1)


def succeeded_per_period(gateway_url: str) -> Counter[tuple[str, str]]:
    return Counter(
        (i["metadata"]["billq_account_id"], i["metadata"].get("billq_period", "?"))
        for i in testkit.ledger(gateway_url)
        if i["status"] == "succeeded"
    )


async def run_worker_until_settled(db: asyncpg.Connection, env: dict[str, str], log: Path) -> None:
    worker = testkit.spawn("worker", env=env, log=log)
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)
    finally:
        testkit.stop_process(worker)


async def charge_first_call(gateway_url: str, db: asyncpg.Connection, job_id: int) -> str:
    """What a worker's first call did before its answer was lost (a timeout): the gateway
    holds the charge; the job is left ``retrying`` after one attempt."""
    job = await testkit.fetchrow(db, "SELECT * FROM billing_jobs WHERE id = $1", job_id)
    gateway = SandboxGateway(gateway_url, "sk_test_billq", timeout=5)
    try:
        result = await gateway.charge(
            ChargeRequest(
                idempotency_key=job["idempotency_key"],
                account_id=job["account_id"],
                amount_cents=job["amount_cents"],
                currency=job["currency"],
                payment_method=job["payment_method"],
                customer=job["gateway_customer"],
                metadata=charge_metadata(job["period_start"], job["dunning_attempt"]),
            )
        )
    finally:
        await gateway.aclose()
    assert isinstance(result, Charged)
    await db.execute(
        "UPDATE billing_jobs SET state = 'retrying', attempts = 1, started_at = now(),"
        " last_error = 'no answer from the gateway' WHERE id = $1",
        job_id,
    )
    return result.charge_id


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(testkit.billq(*args, "--json", env=env).stdout)


async def test_a_dead_letter_replayed_after_the_period_was_paid_by_dunning_charges_nothing(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 1)
    distribute(tmp_env)
    await db.execute("UPDATE accounts SET status = 'cancelled' WHERE id = 1")
    await run_worker_until_settled(db, tmp_env, tmp_path / "w1.log")
    first = await testkit.fetchrow(db, "SELECT id, state FROM billing_jobs")
    assert first["state"] == "dead"

    # The customer returns and pays the period through the dunning path (key …_d1).
    await db.execute("UPDATE accounts SET status = 'past_due', dunning_attempt = 1 WHERE id = 1")
    distribute(tmp_env)
    await run_worker_until_settled(db, tmp_env, tmp_path / "w2.log")
    paid = await testkit.fetchrow(db, "SELECT idempotency_key, gateway_charge_id FROM charges")
    assert paid["idempotency_key"].endswith("_d1")

    letters = cli_json(tmp_env, "dlq", "list")
    out = cli_json(tmp_env, "dlq", "replay", letters[0]["id"])
    assert out["jobs_revived"] == [first["id"]]
    await run_worker_until_settled(db, tmp_env, tmp_path / "w3.log")

    assert succeeded_per_period(gateway_url) == {("1", PERIOD.isoformat()): 1}
    job = await testkit.fetchrow(
        db, "SELECT state, last_error FROM billing_jobs WHERE id = $1", first["id"]
    )
    assert job["state"] == "already_paid" and paid["gateway_charge_id"] in job["last_error"]
    invoice = await testkit.fetchrow(db, "SELECT status, gateway_charge_id FROM invoices")
    assert invoice["gateway_charge_id"] == paid["gateway_charge_id"]


async def test_a_card_update_between_retries_keeps_the_frozen_request_and_records_the_charge(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 1)
    distribute(tmp_env)
    job_id = await db.fetchval("SELECT id FROM billing_jobs")
    taken = await charge_first_call(gateway_url, db, job_id)
    testkit.billq("accounts", "update-payment-method", "1", "pm_card_mastercard", env=tmp_env)
    testkit.billq("jobs", "retry", str(job_id), env=tmp_env)
    await run_worker_until_settled(db, tmp_env, tmp_path / "w.log")

    job = await testkit.fetchrow(
        db, "SELECT state, payment_method FROM billing_jobs WHERE id = $1", job_id
    )
    assert job["state"] == "succeeded" and job["payment_method"] == "pm_card_visa"
    assert await db.fetchval("SELECT gateway_charge_id FROM charges") == taken
    assert await db.fetchval("SELECT status FROM invoices") == "paid"
    advanced = await db.fetchval("SELECT next_billing_at FROM accounts WHERE id = 1")
    assert advanced == dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    assert succeeded_per_period(gateway_url) == {("1", PERIOD.isoformat()): 1}
    # The next period uses the new card under its own key.
    assert (await db.fetchval("SELECT payment_method FROM accounts WHERE id = 1")) == (
        "pm_card_mastercard"
    )


async def test_cancelling_a_retrying_job_whose_first_call_charged_records_the_charge(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
) -> None:
    await seed(db, 2)
    distribute(tmp_env)
    charged_job, clean_job = [
        r["id"] for r in await db.fetch("SELECT id FROM billing_jobs ORDER BY id")
    ]
    taken = await charge_first_call(gateway_url, db, charged_job)

    refused = testkit.billq("jobs", "cancel", str(charged_job), env=tmp_env, check=False)
    assert refused.returncode == 1 and "already charged" in refused.stderr
    assert refused.stderr.count("\n") == 1
    job = await testkit.fetchrow(db, "SELECT state FROM billing_jobs WHERE id = $1", charged_job)
    assert job["state"] == "succeeded"
    assert await db.fetchval("SELECT gateway_charge_id FROM charges") == taken

    # A job that called the gateway without a charge there is cancelled for good.
    await db.execute(
        "UPDATE billing_jobs SET state = 'retrying', attempts = 1 WHERE id = $1", clean_job
    )
    assert "cancelled" in testkit.billq("jobs", "cancel", str(clean_job), env=tmp_env).stdout
    row = await testkit.fetchrow(
        db, "SELECT state, cancelled_at FROM billing_jobs WHERE id = $1", clean_job
    )
    assert row["state"] == "dead" and row["cancelled_at"] is not None
    again = testkit.billq("jobs", "retry", str(clean_job), env=tmp_env, check=False)
    assert again.returncode == 1 and "cancelled by an operator" in again.stderr
    actions = await db.fetch("SELECT action, target FROM operator_actions ORDER BY id")
    assert [(a["action"], a["target"]) for a in actions][:2] == [
        ("jobs.cancel", str(charged_job)),
        ("jobs.cancel", str(clean_job)),
    ]


async def test_a_replayed_letter_never_revives_a_cancelled_job_or_a_job_it_does_not_match(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 2)
    distribute(tmp_env)
    await db.execute("UPDATE accounts SET status = 'cancelled' WHERE id = 1")
    one, two = [r["id"] for r in await db.fetch("SELECT id FROM billing_jobs ORDER BY id")]
    # A forged body naming job two with another account's key.
    await testkit.publish_raw(
        settings,
        json.dumps(
            {
                "schema_version": 1,
                "job_id": two,
                "account_id": 1,
                "period_start": "2026-03-01",
                "idempotency_key": "billq_1_2026-03-01",
                "run_id": 1,
            }
        ).encode(),
    )
    await run_worker_until_settled(db, tmp_env, tmp_path / "w1.log")
    assert (await db.fetchval("SELECT state FROM billing_jobs WHERE id = $1", one)) == "dead"

    # The operator brings the job back, then cancels it: the cancel is final.
    await db.execute("UPDATE accounts SET status = 'active' WHERE id = 1")
    testkit.billq("jobs", "retry", str(one), env=tmp_env)
    testkit.billq("jobs", "cancel", str(one), env=tmp_env)

    async def two_letters() -> bool:
        return len(cli_json(tmp_env, "dlq", "list")) == 2

    await testkit.wait_until(two_letters, timeout=20)
    out = cli_json(tmp_env, "dlq", "replay", "--all")
    assert out["jobs_revived"] == []
    reasons = " ".join(out["jobs_not_revived"].values())
    assert "cancelled by an operator" in reasons and "does not match" in reasons
    testkit.billq("reconcile", env=tmp_env)
    await run_worker_until_settled(db, tmp_env, tmp_path / "w2.log")
    assert succeeded_per_period(gateway_url) == {("2", PERIOD.isoformat()): 1}
    assert (await db.fetchval("SELECT state FROM billing_jobs WHERE id = $1", one)) == "dead"


async def test_a_cancelled_account_is_never_billed_again_and_a_future_cancel_bills_until_then(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 3)
    distribute(tmp_env)  # jobs for the March period exist for all three
    out = testkit.billq("accounts", "cancel", "1", env=tmp_env).stdout
    assert "status active → cancelled" in out
    # Account 2 cancels in the future: its periods that start before then are billed, the
    # one that starts at the cancellation is not — neither by the scan nor by the gate.
    testkit.billq("accounts", "cancel", "2", "--at", "2099-01-01", env=tmp_env)
    await run_worker_until_settled(db, tmp_env, tmp_path / "w1.log")
    await db.execute(
        "UPDATE accounts SET next_billing_at = '2099-01-01T00:00:00Z' WHERE id IN (2, 3)"
    )
    testkit.billq("distribute", "--as-of", "2099-01-01T12:00:00Z", env=tmp_env)
    await run_worker_until_settled(db, tmp_env, tmp_path / "w2.log")

    charged = succeeded_per_period(gateway_url)
    assert charged == {
        ("2", "2026-03-01"): 1,
        ("3", "2026-03-01"): 1,
        ("3", "2099-01-01"): 1,
    }, charged
    dead = await db.fetchval("SELECT last_error FROM billing_jobs WHERE account_id = 1")
    assert "cancelled" in dead
    events = await db.fetch("SELECT kind FROM account_events WHERE account_id = 1")
    assert [e["kind"] for e in events] == ["cancelled"]
    bad = testkit.billq("accounts", "cancel", "99", env=tmp_env, check=False)
    assert bad.returncode == 2 and "no account 99" in bad.stderr


async def test_audit_finds_money_taken_but_not_recorded_and_repair_records_it(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 3)
    distribute(tmp_env)
    await run_worker_until_settled(db, tmp_env, tmp_path / "w.log")
    assert cli_json(tmp_env, "audit") == {
        "checked": 3,
        "taken_not_recorded": [],
        "recorded_not_taken": [],
        "double_taken": [],
        "refunds_checked": 0,
        "refunded_not_recorded": [],
        "refund_recorded_not_refunded": [],
    }
    # A worker charged account 3 and died before its commit, then its job was forced dead
    # (as `jobs cancel` used to do); and someone charged account 1's period a second time.
    await db.execute("DELETE FROM invoices WHERE account_id = 3")
    await db.execute("DELETE FROM charges WHERE account_id = 3")
    await db.execute(
        "UPDATE billing_jobs SET state = 'dead', last_error = 'forced' WHERE account_id = 3"
    )
    await db.execute("UPDATE accounts SET next_billing_at = '2026-03-01T00:00:00Z' WHERE id = 3")
    gateway = SandboxGateway(gateway_url, "sk_test_billq", timeout=5)
    try:
        await gateway.charge(
            ChargeRequest(
                idempotency_key="outside_billq_1",
                account_id=1,
                amount_cents=1001,
                currency="USD",
                payment_method="pm_card_visa",
                metadata=charge_metadata(PERIOD, 0),
            )
        )
    finally:
        await gateway.aclose()

    found = testkit.billq("audit", "--json", env=tmp_env, check=False)
    assert found.returncode == 1
    report = json.loads(found.stdout)
    assert [x["account_id"] for x in report["taken_not_recorded"]] == [3]
    assert [x["account_id"] for x in report["double_taken"]] == [1]
    assert report["recorded_not_taken"] == []

    repaired = json.loads(
        testkit.billq("audit", "--repair", "--json", env=tmp_env, check=False).stdout
    )
    assert [x["account_id"] for x in repaired["repaired"]] == [3]
    job = await testkit.fetchrow(db, "SELECT state FROM billing_jobs WHERE account_id = 3")
    assert job["state"] == "succeeded"
    assert await db.fetchval("SELECT status FROM invoices WHERE account_id = 3") == "paid"
    assert await db.fetchval("SELECT next_billing_at FROM accounts WHERE id = 3") == dt.datetime(
        2026, 4, 1, tzinfo=dt.UTC
    )
    after = json.loads(testkit.billq("audit", "--json", env=tmp_env, check=False).stdout)
    assert after["taken_not_recorded"] == [] and len(after["double_taken"]) == 1
    # Nothing was charged by the audit: the gateway holds the same four charges.
    assert sum(succeeded_per_period(gateway_url).values()) == 4
