"""Refunds end to end: ``billq refund`` and the worker against the real services and the
sandbox gateway — full and partial, never more than was charged (also when two requests
race), a worker that died after the gateway refunded, and the audit's view of refunds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import testkit
from testkit import all_terminal, distribute, seed

from shared.billing.refunds import refund_metadata
from shared.config import Settings
from shared.db.pool import create_pool
from shared.errors import ActionRefused, InvalidRequest
from shared.gateway.port import RefundRequest
from shared.gateway.sandbox import SandboxGateway
from shared.refunds import RefundAsk, create

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def settle(db: asyncpg.Connection, env: dict[str, str], log: Path) -> None:
    """One worker until every job (refunds too) has ended."""
    worker = testkit.spawn("worker", env=env, log=log)
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)
    finally:
        testkit.stop_process(worker)


async def billed(db: asyncpg.Connection, env: dict[str, str], log: Path, n: int = 1) -> None:
    await seed(db, n)
    distribute(env)
    await settle(db, env, log)


def refund(env: dict[str, str], *args: str, check: bool = True) -> Any:
    done = testkit.billq("refund", *args, "--json", env=env, check=check)
    return json.loads(done.stdout) if done.returncode == 0 else done


def gateway_refunds(gateway_url: str) -> list[dict[str, Any]]:
    return testkit.ledger(gateway_url, "/v1/refunds")


async def test_a_partial_then_a_full_refund_give_the_whole_charge_back_once_with_credit_notes(
    db: asyncpg.Connection, gateway_url: str, tmp_env: dict[str, str], tmp_path: Path
) -> None:
    await billed(db, tmp_env, tmp_path / "w.log")
    charge = await testkit.fetchrow(db, "SELECT * FROM charges WHERE account_id = 1")
    assert charge["amount_cents"] == 1001

    first = refund(tmp_env, str(charge["id"]), "--amount", "300")
    assert (first["amount"], first["state"]) == (300, "published")
    assert first["idempotency_key"] == f"billq_refund_{charge['id']}_1"
    await settle(db, tmp_env, tmp_path / "w2.log")
    rest = refund(tmp_env, str(charge["id"]))  # no amount: all that is left
    assert rest["amount"] == 701
    await settle(db, tmp_env, tmp_path / "w3.log")

    rows = await db.fetch("SELECT * FROM refunds ORDER BY id")
    assert [(r["amount_cents"], r["idempotency_key"]) for r in rows] == [
        (300, f"billq_refund_{charge['id']}_1"),
        (701, f"billq_refund_{charge['id']}_2"),
    ]
    at_gateway = gateway_refunds(gateway_url)
    assert sorted(r["amount"] for r in at_gateway) == [300, 701]
    assert {r["payment_intent"] for r in at_gateway} == {charge["gateway_charge_id"]}
    assert {r["id"] for r in at_gateway} == {r["gateway_refund_id"] for r in rows}
    assert (
        await db.fetchval("SELECT refunded_cents FROM charges WHERE id = $1", charge["id"]) == 1001
    )
    invoice = await testkit.fetchrow(db, "SELECT * FROM invoices WHERE account_id = 1")
    assert invoice["credited_cents"] == 1001
    notes = await db.fetch("SELECT * FROM credit_notes WHERE invoice_id = $1", invoice["id"])
    assert sorted(n["amount_cents"] for n in notes) == [300, 701]
    assert all(n["number"].startswith("CN-") for n in notes)
    shown = testkit.billq("invoices", "show", invoice["number"], env=tmp_env).stdout
    assert "credit note" in shown

    again = refund(tmp_env, str(charge["id"]), check=False)
    assert again.returncode == 1
    assert "charge_already_refunded" in again.stderr or "already been refunded" in again.stderr
    report = json.loads(testkit.billq("report", "1", "--json", env=tmp_env).stdout)
    assert report["refunded"] == [{"currency": "USD", "refunds": 2, "amount_cents": 1001}]
    audit = json.loads(testkit.billq("audit", "--json", env=tmp_env).stdout)
    assert (audit["refunds_checked"], audit["refunded_not_recorded"]) == (2, [])


async def test_a_refund_of_more_than_was_charged_is_refused_and_nothing_moves(
    db: asyncpg.Connection, gateway_url: str, tmp_env: dict[str, str], tmp_path: Path
) -> None:
    await billed(db, tmp_env, tmp_path / "w.log")
    charge_id = await db.fetchval("SELECT id FROM charges WHERE account_id = 1")

    refused = refund(tmp_env, str(charge_id), "--amount", "1002", check=False)
    missing = refund(tmp_env, "999999", check=False)

    assert refused.returncode == 1 and "amount_too_large" in refused.stderr
    assert missing.returncode == 1 and "no such charge" in missing.stderr
    assert await db.fetchval("SELECT count(*) FROM billing_jobs WHERE refund_of IS NOT NULL") == 0
    assert gateway_refunds(gateway_url) == []


async def test_two_concurrent_partial_refunds_beyond_the_charge_create_one_refund(
    db: asyncpg.Connection, settings: Settings, tmp_env: dict[str, str], tmp_path: Path
) -> None:
    await billed(db, tmp_env, tmp_path / "w.log")
    charge_id = await db.fetchval("SELECT id FROM charges WHERE account_id = 1")  # 1001
    pool = await create_pool(settings, min_size=2, max_size=4)
    try:
        answers = await asyncio.gather(
            *(create(pool, RefundAsk(charge_id, 600), None) for _ in range(2)),
            return_exceptions=True,
        )
    finally:
        await pool.close()

    refused = [a for a in answers if isinstance(a, BaseException)]
    assert len(refused) == 1, answers
    assert isinstance(refused[0], InvalidRequest) and refused[0].code == "amount_too_large"
    jobs = await db.fetch("SELECT amount_cents FROM billing_jobs WHERE refund_of = $1", charge_id)
    assert [j["amount_cents"] for j in jobs] == [600]


async def test_the_charges_refunds_can_never_be_recorded_beyond_it(
    db: asyncpg.Connection, settings: Settings, tmp_env: dict[str, str], tmp_path: Path
) -> None:
    """The database's own line, under whatever created the jobs: two jobs of 600 forced past
    the creation check, both claimed; the second record is refused and changes nothing."""
    from shared.db import refunds_repo

    await billed(db, tmp_env, tmp_path / "w.log")
    charge_id = await db.fetchval("SELECT id FROM charges WHERE account_id = 1")
    for n in (1, 2):
        await db.execute(
            "INSERT INTO billing_jobs (kind, account_id, period_start, period_end,"
            " idempotency_key, amount_cents, currency, refund_of, state, attempts)"
            " SELECT 'refund', account_id, period_start, period_end, $2, 600, currency, $1,"
            " 'processing', 1 FROM billing_jobs WHERE id = (SELECT job_id FROM charges"
            " WHERE id = $1)",
            charge_id,
            f"billq_refund_{charge_id}_{n}",
        )
    jobs = await db.fetch("SELECT id FROM billing_jobs WHERE refund_of = $1 ORDER BY id", charge_id)
    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        assert await refunds_repo.record_refund(pool, jobs[0]["id"], 1, "re_first")
        with pytest.raises(ActionRefused, match="more than its charge"):
            await refunds_repo.record_refund(pool, jobs[1]["id"], 1, "re_second")
    finally:
        await pool.close()
    assert await db.fetchval("SELECT refunded_cents FROM charges WHERE id = $1", charge_id) == 600
    assert await db.fetchval("SELECT count(*) FROM refunds") == 1


async def test_a_worker_that_died_after_the_gateway_refunded_is_replayed_and_recorded_once(
    db: asyncpg.Connection, gateway_url: str, tmp_env: dict[str, str], tmp_path: Path
) -> None:
    await billed(db, tmp_env, tmp_path / "w.log")
    charge = await testkit.fetchrow(db, "SELECT * FROM charges WHERE account_id = 1")
    created = refund(tmp_env, str(charge["id"]), "--amount", "400")
    job = await testkit.fetchrow(db, "SELECT * FROM billing_jobs WHERE id = $1", created["id"])
    # What the dead worker did: its claim, and the gateway's refund under the job's key;
    # then it died before its commit (the lease lapsed, its message went back to the queue).
    gateway = SandboxGateway(gateway_url, "sk_test_billq", timeout=5)
    try:
        first = await gateway.refund(
            RefundRequest(
                idempotency_key=job["idempotency_key"],
                charge_id=charge["gateway_charge_id"],
                amount_cents=400,
                currency="USD",
                metadata=refund_metadata(charge["id"], 1),
            )
        )
    finally:
        await gateway.aclose()
    await db.execute(
        "UPDATE billing_jobs SET state = 'processing', attempts = 1, started_at = now(),"
        " locked_by = 'dead-worker', locked_until = now() - interval '1 second' WHERE id = $1",
        job["id"],
    )

    await settle(db, tmp_env, tmp_path / "w2.log")

    [row] = await db.fetch("SELECT * FROM refunds")
    assert row["gateway_refund_id"] == first.refund_id
    assert [r["id"] for r in gateway_refunds(gateway_url)] == [first.refund_id]
    done = await testkit.fetchrow(db, "SELECT * FROM billing_jobs WHERE id = $1", job["id"])
    assert (done["state"], done["attempts"]) == ("succeeded", 2)


async def test_audit_finds_a_refund_the_gateway_made_that_billq_never_recorded(
    db: asyncpg.Connection, gateway_url: str, tmp_env: dict[str, str], tmp_path: Path
) -> None:
    await billed(db, tmp_env, tmp_path / "w.log")
    charge_id = await db.fetchval("SELECT id FROM charges WHERE account_id = 1")
    refund(tmp_env, str(charge_id), "--amount", "250")
    await settle(db, tmp_env, tmp_path / "w2.log")
    # As if the worker's commit never landed: the gateway refunded, billq holds no refund.
    await db.execute("DELETE FROM credit_notes")
    await db.execute("DELETE FROM refunds")
    await db.execute("UPDATE charges SET refunded_cents = 0")
    await db.execute("UPDATE invoices SET credited_cents = 0")
    await db.execute("UPDATE billing_jobs SET state = 'dead' WHERE refund_of IS NOT NULL")

    found = testkit.billq("audit", "--json", env=tmp_env, check=False)
    assert found.returncode == 1
    report = json.loads(found.stdout)
    [missing] = report["refunded_not_recorded"]
    assert (missing["amount"], missing["idempotency_key"]) == (250, f"billq_refund_{charge_id}_1")
    assert report["taken_not_recorded"] == [] and report["refund_recorded_not_refunded"] == []

    repaired = json.loads(
        testkit.billq("audit", "--repair", "--json", env=tmp_env, check=False).stdout
    )
    assert [r["refund_id"] for r in repaired["repaired"]] == [missing["refund_id"]]
    assert await db.fetchval("SELECT count(*) FROM refunds") == 1
    assert await db.fetchval("SELECT refunded_cents FROM charges") == 250
    clean = testkit.billq("audit", "--json", env=tmp_env, check=False)
    assert clean.returncode == 0, clean.stdout
    assert len(gateway_refunds(gateway_url)) == 1  # the audit never refunds


async def test_refunds_over_http_are_idempotent_and_refused_beyond_the_charge_as_stripe_does(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    import apikit

    await billed(db, tmp_env, tmp_path / "w.log")
    charge_id = await db.fetchval("SELECT id FROM charges WHERE account_id = 1")  # 1001 USD
    async with apikit.api_client(settings) as client:

        async def post(key: str, body: dict[str, Any]) -> tuple[int, Any, Any]:
            answer = await client.post("/v1/refunds", json=body, headers={"Idempotency-Key": key})
            return answer.status, await answer.json(), answer.headers

        status, first, _ = await post("rf-1", {"charge_id": charge_id, "amount": 600})
        again, replay, headers = await post("rf-1", {"charge_id": charge_id, "amount": 600})
        other, conflict, _ = await post("rf-1", {"charge_id": charge_id, "amount": 601})
        over, refused, _ = await post("rf-2", {"charge_id": charge_id, "amount": 402})
        gone, missing, _ = await post("rf-3", {"charge_id": 999999})
        bad, invalid, _ = await post("rf-4", {"charge_id": charge_id, "amount": -1})
        shown = await client.get(f"/v1/refunds/{first['id']}")

        assert (status, first["object"], first["amount"], first["state"]) == (
            201,
            "refund",
            600,
            "pending",  # as created; the answer a replay gives too
        )
        apikit.check("/v1/refunds", "post", 201, first)
        assert (again, replay, headers.get("Idempotent-Replayed")) == (201, first, "true")
        assert other == 409 and conflict["error"]["type"] == "idempotency_error"
        assert over == 400
        assert refused["error"]["type"] == "invalid_request_error"
        assert (refused["error"]["code"], refused["error"]["param"]) == (
            "amount_too_large",
            "amount",
        )
        apikit.check("/v1/refunds", "post", 400, refused)
        assert gone == 404 and missing["error"]["param"] == "charge_id"
        assert bad == 400 and invalid["error"]["param"] == "amount"
        assert shown.status == 200
        apikit.check("/v1/refunds/{id}", "get", 200, await shown.json())

    await settle(db, tmp_env, tmp_path / "w2.log")
    assert [r["amount"] for r in gateway_refunds(gateway_url)] == [600]
    done = await testkit.fetchrow(db, "SELECT * FROM refunds")
    assert (done["amount_cents"], done["job_id"]) == (600, first["id"])
