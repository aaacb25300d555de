"""One-off charges through the whole pipeline as operators run it: ``billq api``, the
distributor, a worker and the sandbox gateway as subprocesses, real RabbitMQ and Postgres."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apikit
import asyncpg
import httpx
import pytest
import testkit
from testkit import all_terminal, seed

from shared.billing import kinds

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TOKEN = "tok_test_api"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def api_server(env: dict[str, str], tmp: Path) -> Iterator[str]:
    port = testkit.free_port()
    proc = testkit.spawn(
        "api", "--port", str(port), env={**env, "BILLQ_API_TOKENS": TOKEN}, log=tmp / "api.log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        testkit.wait_http(url + "/healthz", proc)
        yield url
    finally:
        assert testkit.stop_process(proc) == 0


def charge(url: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/charges", json=body, headers={**AUTH, "Idempotency-Key": key}, timeout=10
    )


def today_as_of() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


async def bill_today(db: asyncpg.Connection) -> None:
    """Make the seeded accounts' period start today: the same day a one-off made now has,
    the adversarial case for anything that keys on (account, date)."""
    today = dt.datetime.now(dt.UTC).date()
    await db.execute(
        "UPDATE accounts SET next_billing_at = $1::date::timestamp AT TIME ZONE 'UTC', "
        "billing_anchor_day = $2",
        today,
        today.day,
    )


def run_worker_until_done(env: dict[str, str], tmp: Path, db: asyncpg.Connection) -> Any:
    worker = testkit.spawn("worker", "--concurrency", "8", env=env, log=tmp / "worker.log")

    async def wait() -> None:
        try:
            await testkit.wait_until(lambda: all_terminal(db), timeout=90)
        finally:
            assert testkit.stop_process(worker) == 0

    return wait()


async def test_one_off_charges_over_http_are_charged_once_beside_the_same_days_period_charges(
    db: asyncpg.Connection,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 3)
    await seed(db, 1, start=4, card=lambda i: "pm_card_chargeDeclinedInsufficientFunds")
    await bill_today(db)
    # Account 4 is not due: only its one-off is tried, and declined.
    await db.execute(
        "UPDATE accounts SET next_billing_at = now() + interval '10 days' WHERE id = 4"
    )
    with api_server(tmp_env, tmp_path) as url:
        first = charge(url, "order-1", {"account_id": 1, "amount": 700, "currency": "USD"})
        assert first.status_code == 201, first.text
        replay = charge(url, "order-1", {"account_id": 1, "amount": 700, "currency": "USD"})
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json() == first.json()
        second = charge(url, "order-2", {"account_id": 1, "amount": 300, "currency": "EUR"})
        declined = charge(url, "order-3", {"account_id": 4, "amount": 900, "currency": "USD"})
        assert {second.status_code, declined.status_code} == {201}

        summary = testkit.distribute(tmp_env, "--as-of", today_as_of())
        assert summary["due"] == 3 and summary["published"] == 3, json.dumps(summary)
        await run_worker_until_done(tmp_env, tmp_path, db)

        shown = httpx.get(f"{url}/v1/jobs/{first.json()['id']}", headers=AUTH).json()
        apikit.check("/v1/jobs/{id}", "get", 200, shown)
        assert shown["state"] == "succeeded" and shown["charge"] is not None
        assert shown["invoice"] is not None
        refused = httpx.get(f"{url}/v1/jobs/{declined.json()['id']}", headers=AUTH).json()
        assert refused["state"] == "failed" and refused["decline_code"] == "insufficient_funds"
        listed = httpx.get(f"{url}/v1/accounts/1/charges", headers=AUTH).json()
        apikit.check("/v1/accounts/{id}/charges", "get", 200, listed)
        assert sorted((c["kind"], c["amount"]) for c in listed["data"]) == [
            ("oneoff", 300),
            ("oneoff", 700),
            ("period", 1001),
        ]

    # At the gateway: every key charged once; 3 periods and 2 one-offs took money.
    intents = testkit.ledger(gateway_url)
    succeeded = [i for i in intents if i["status"] == "succeeded"]
    keys = [i["metadata"]["billq_idempotency_key"] for i in succeeded]
    assert len(keys) == len(set(keys)) == 5
    assert keys.count(first.json()["idempotency_key"]) == 1
    assert sum(i["metadata"].get("billq_kind") == "oneoff" for i in succeeded) == 2
    charges = await db.fetch("SELECT kind, idempotency_key, gateway_charge_id FROM charges")
    assert sorted(c["idempotency_key"] for c in charges) == sorted(keys)
    assert sorted(c["kind"] for c in charges) == ["oneoff", "oneoff", "period", "period", "period"]
    # The period advanced once per account; the one-offs moved no period and no dunning.
    accounts = {
        r["id"]: r
        for r in await db.fetch("SELECT id, next_billing_at, status, dunning_attempt FROM accounts")
    }
    today = dt.datetime.now(dt.UTC).date()
    for a in (1, 2, 3):
        assert accounts[a]["next_billing_at"].date() > today
    assert accounts[4]["status"] == "active" and accounts[4]["dunning_attempt"] == 0
    invoices = await db.fetch("SELECT kind, status FROM invoices ORDER BY number")
    assert sorted((i["kind"], i["status"]) for i in invoices) == [
        ("oneoff", "paid"),
        ("oneoff", "paid"),
        ("period", "paid"),
        ("period", "paid"),
        ("period", "paid"),
    ]
    # The audit holds the one-offs to the same rule: money at the gateway recorded once.
    audit = testkit.billq("audit", "--json", env=tmp_env, check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert json.loads(audit.stdout)["checked"] == 5

    # A one-off whose record was lost (a restore from before it) is found, and recorded.
    lost = first.json()["id"]
    await db.execute("DELETE FROM invoices WHERE job_id = $1", lost)
    await db.execute("DELETE FROM charges WHERE job_id = $1", lost)
    await db.execute("UPDATE billing_jobs SET state = 'dead' WHERE id = $1", lost)
    found = testkit.billq("audit", "--json", env=tmp_env, check=False)
    assert found.returncode == 1
    [missing] = json.loads(found.stdout)["taken_not_recorded"]
    assert (missing["kind"], missing["period_start"]) == ("oneoff", None)
    assert missing["idempotency_key"] == first.json()["idempotency_key"]
    testkit.billq("audit", "--repair", env=tmp_env, check=False)
    assert testkit.billq("audit", env=tmp_env, check=False).returncode == 0
    row = await testkit.fetchrow(
        db,
        "SELECT j.state, c.kind FROM billing_jobs j JOIN charges c ON c.job_id = j.id"
        " WHERE j.id = $1",
        lost,
    )
    assert (row["state"], row["kind"]) == ("succeeded", "oneoff")
    assert accounts[1]["next_billing_at"] == await db.fetchval(
        "SELECT next_billing_at FROM accounts WHERE id = 1"
    )


async def test_a_one_off_the_api_committed_but_could_not_publish_is_published_by_distribute(
    db: asyncpg.Connection,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 1)
    await db.execute("UPDATE accounts SET next_billing_at = now() + interval '10 days'")
    # The API's broker is gone after the commit (as if it crashed before publishing).
    no_broker = {
        **tmp_env,
        "BILLQ_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{testkit.free_port()}/",
    }
    with api_server(no_broker, tmp_path) as url:
        created = charge(url, "late-1", {"account_id": 1, "amount": 500, "currency": "USD"})
        assert created.status_code == 201, created.text
    job = created.json()
    assert await db.fetchval("SELECT state FROM billing_jobs WHERE id = $1", job["id"]) == "pending"
    # Within BILLQ_PUBLISH_TIMEOUT the API's own publish may still be under way: left alone.
    waiting = {**tmp_env, "BILLQ_PUBLISH_TIMEOUT": "600"}  # however slow this machine is
    summary = testkit.distribute(waiting, "--as-of", today_as_of())
    assert summary["reconciled"] == 0 and summary["republished"] == 0
    assert await db.fetchval("SELECT state FROM billing_jobs WHERE id = $1", job["id"]) == "pending"
    await db.execute(
        "UPDATE billing_jobs SET created_at = now() - interval '1 hour' WHERE id = $1", job["id"]
    )

    summary = testkit.distribute(tmp_env, "--as-of", today_as_of())
    # Published by its reconcile step, the one rule for jobs of no run.
    assert summary["reconciled"] == 1 and summary["republished"] == 0 and summary["due"] == 0
    await run_worker_until_done(tmp_env, tmp_path, db)
    row = await testkit.fetchrow(
        db, "SELECT state, attempts FROM billing_jobs WHERE id = $1", job["id"]
    )
    assert (row["state"], row["attempts"]) == ("succeeded", 1)
    keys = [
        i["metadata"]["billq_idempotency_key"]
        for i in testkit.ledger(gateway_url)
        if i["status"] == "succeeded"
    ]
    assert keys == [kinds.oneoff_idempotency_key(1, "late-1")]


async def test_billq_charge_shares_the_apis_keys_and_refuses_bad_arguments_in_one_line(
    db: asyncpg.Connection, tmp_env: dict[str, str]
) -> None:
    await seed(db, 1)
    made = testkit.billq("charge", "1", "1250", "eur", "--key", "cli-1", "--json", env=tmp_env)
    job = json.loads(made.stdout)
    apikit.check("/v1/charges", "post", 201, job)
    again = testkit.billq("charge", "1", "1250", "EUR", "--key", "cli-1", env=tmp_env)
    assert "replayed" in again.stdout
    other = testkit.billq("charge", "1", "1251", "EUR", "--key", "cli-1", env=tmp_env, check=False)
    assert other.returncode == 1 and other.stderr.count("\n") == 1
    assert "same parameters" in other.stderr
    for args, where in (
        (("1", "12.50", "EUR"), "AMOUNT"),
        (("1", "1250", "EURO"), "CURRENCY"),
        (("x", "1250", "EUR"), "ACCOUNT"),
    ):
        bad = testkit.billq("charge", *args, "--key", "cli-2", env=tmp_env, check=False)
        assert bad.returncode == 2, bad.stderr
        assert bad.stderr.startswith(f"billq: error: {where}: ") and bad.stderr.count("\n") == 1
    missing = testkit.billq(
        "charge", "999", "1250", "EUR", "--key", "cli-3", env=tmp_env, check=False
    )
    assert missing.returncode == 1 and "no such account" in missing.stderr
    assert await db.fetchval("SELECT count(*) FROM billing_jobs") == 1
    assert await db.fetchval("SELECT state FROM billing_jobs") == "published"
