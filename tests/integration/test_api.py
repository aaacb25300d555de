"""``billq api`` in-process against the real Postgres and RabbitMQ: one-off charges with the
caller's Idempotency-Key, token auth, Stripe-shaped errors, and every answer checked against
the OpenAPI document."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import apikit
import asyncpg
import pytest
import testkit
from pydantic import SecretStr

from shared.amqp import topology
from shared.amqp.connection import connect_any
from shared.config import Settings

pytestmark = pytest.mark.integration

CHARGE = {"account_id": 1, "amount": 1250, "currency": "eur", "description": "setup fee"}


@pytest.fixture
async def ready(settings: Settings, db: asyncpg.Connection) -> Settings:
    await testkit.seed(db, 2)
    conn = await connect_any(settings.amqp_urls)
    try:
        await topology.declare(await conn.channel(), settings)
    finally:
        await conn.close()
    return settings


async def post(client: Any, body: Any, key: str | None = "k-1", **headers: str) -> Any:
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/v1/charges", json=body, headers=headers)


async def test_a_one_off_charge_creates_one_published_job_and_its_replay_answers_the_same(
    ready: Settings, db: asyncpg.Connection
) -> None:
    async with apikit.api_client(ready) as client:
        first = await post(client, CHARGE)
        body = await first.json()
        assert first.status == 201, body
        apikit.check("/v1/charges", "post", 201, body)
        assert "Idempotent-Replayed" not in first.headers
        assert first.headers["Location"] == f"/v1/jobs/{body['id']}"
        assert body["kind"] == "oneoff" and body["state"] == "pending"
        assert body["currency"] == "EUR" and body["amount"] == 1250
        assert body["idempotency_key"].startswith("billq_1_oneoff_")

        again = await post(client, dict(reversed(CHARGE.items())))  # same fields, other order
        assert again.status == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert await again.json() == body

        job = await client.get(f"/v1/jobs/{body['id']}")
        shown = await job.json()
        apikit.check("/v1/jobs/{id}", "get", 200, shown)
        assert shown["state"] == "published"
    rows = await db.fetch("SELECT kind, state, run_id FROM billing_jobs")
    assert [tuple(r) for r in rows] == [("oneoff", "published", None)]
    # An application waits for its one-off: it travels the priority lane, not the bulk one.
    depths = await testkit.queue_depths(ready)
    assert depths[f"{ready.queue_prefix}.charge.priority"][0] == 1
    assert depths[f"{ready.queue_prefix}.charge"][0] == 0


async def test_the_same_key_with_another_body_is_a_409_idempotency_error(
    ready: Settings, db: asyncpg.Connection
) -> None:
    async with apikit.api_client(ready) as client:
        assert (await post(client, CHARGE)).status == 201
        other = await post(client, {**CHARGE, "amount": 1251})
        body = await other.json()
        assert other.status == 409
        apikit.check("/v1/charges", "post", 409, body)
        assert body["error"]["type"] == "idempotency_error"
    assert await db.fetchval("SELECT count(*) FROM billing_jobs") == 1


async def test_concurrent_requests_with_one_key_create_one_job_and_all_get_its_answer(
    ready: Settings, db: asyncpg.Connection
) -> None:
    async with apikit.api_client(ready) as client:
        answers = await asyncio.gather(*(post(client, CHARGE, "same-key") for _ in range(8)))
        bodies = [await a.json() for a in answers]
    assert [a.status for a in answers] == [201] * 8
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 7
    assert len({b["id"] for b in bodies}) == 1
    assert await db.fetchval("SELECT count(*) FROM billing_jobs") == 1


@pytest.mark.parametrize(
    ("body", "key", "status", "code", "param"),
    [
        (CHARGE, None, 400, "idempotency_key_missing", None),
        (CHARGE, "x" * 256, 400, "idempotency_key_invalid", None),
        (
            {k: v for k, v in CHARGE.items() if k != "amount"},
            "k",
            400,
            "parameter_missing",
            "amount",
        ),
        ({**CHARGE, "amount": 0}, "k", 400, "invalid_request", "amount"),
        ({**CHARGE, "amount": "12.50"}, "k", 400, "invalid_request", "amount"),
        ({**CHARGE, "currency": "EURO"}, "k", 400, "invalid_request", "currency"),
        ({**CHARGE, "currency": "KWD", "amount": 5124}, "k", 400, "invalid_request", "amount"),
        ({**CHARGE, "colour": "red"}, "k", 400, "parameter_unknown", "colour"),
        ([CHARGE], "k", 400, "invalid_request", None),
        ({**CHARGE, "account_id": 999}, "k", 404, "resource_missing", "account_id"),
    ],
)
async def test_a_bad_request_is_refused_with_a_stripe_shaped_error_naming_the_param(
    ready: Settings,
    db: asyncpg.Connection,
    body: Any,
    key: str | None,
    status: int,
    code: str,
    param: str | None,
) -> None:
    async with apikit.api_client(ready) as client:
        answer = await post(client, body, key)
        error = await answer.json()
    assert answer.status == status, error
    apikit.check("/v1/charges", "post", status, error)
    assert (error["error"]["code"], error["error"]["param"]) == (code, param)
    assert await db.fetchval("SELECT count(*) FROM billing_jobs") == 0
    # Refused requests store nothing: the key stays free for a corrected request.
    assert await db.fetchval("SELECT count(*) FROM api_idempotency_keys") == 0


async def test_a_body_that_is_not_json_is_a_400(ready: Settings) -> None:
    async with apikit.api_client(ready) as client:
        answer = await client.post(
            "/v1/charges", data=b"amount=5", headers={"Idempotency-Key": "k"}
        )
        error = await answer.json()
    assert answer.status == 400
    apikit.check("/v1/charges", "post", 400, error)


async def test_a_cancelled_account_is_not_charged(ready: Settings, db: asyncpg.Connection) -> None:
    await db.execute("UPDATE accounts SET status = 'cancelled', cancelled_at = now() WHERE id = 1")
    async with apikit.api_client(ready) as client:
        answer = await post(client, CHARGE)
        error = await answer.json()
    assert answer.status == 400 and error["error"]["code"] == "account_not_billable"


async def test_tokens_are_required_when_set_and_any_listed_one_is_accepted(
    ready: Settings,
) -> None:
    rotated = ready.model_copy(update={"api_tokens": SecretStr("new-token, old-token")})
    async with apikit.api_client(rotated) as client:
        missing = await client.get("/v1/jobs/1")
        wrong = await client.get("/v1/jobs/1", headers={"Authorization": "Bearer nope"})
        for answer in (missing, wrong):
            assert answer.status == 401
            apikit.check("/v1/jobs/{id}", "get", 401, await answer.json())
        for token in ("new-token", "old-token"):
            ok = await client.get("/v1/jobs/1", headers={"Authorization": f"Bearer {token}"})
            assert ok.status == 404  # past auth: there is no job 1
        user_only = base64.b64encode(b"old-token:").decode()  # curl -u TOKEN:
        basic = await client.get("/v1/jobs/1", headers={"Authorization": f"Basic {user_only}"})
        assert basic.status == 404
        # The contract and the health check are open.
        assert (await client.get("/openapi.json")).status == 200
        assert (await client.get("/healthz")).status == 200


async def test_an_accounts_charges_are_listed_newest_first_in_pages(
    ready: Settings, db: asyncpg.Connection
) -> None:
    await db.execute(
        """
        WITH run AS (INSERT INTO billing_runs (as_of) VALUES (now()) RETURNING id),
             jobs AS (
                INSERT INTO billing_jobs (run_id, account_id, period_start, period_end,
                                          idempotency_key, amount_cents, currency, state)
                SELECT run.id, 1, d::date, (d + interval '1 month')::date,
                       'billq_1_' || d::date, 1001, 'USD', 'succeeded'
                  FROM run, generate_series('2026-01-01'::date, '2026-03-01', '1 month') d
                RETURNING id, period_start, period_end, idempotency_key)
        INSERT INTO charges (job_id, account_id, period_start, period_end, amount_cents,
                             currency, idempotency_key, gateway_charge_id)
        SELECT id, 1, period_start, period_end, 1001, 'USD', idempotency_key, 'pi_' || id
          FROM jobs
        """
    )
    async with apikit.api_client(ready) as client:
        first = await client.get("/v1/accounts/1/charges", params={"limit": "2"})
        page = await first.json()
        apikit.check("/v1/accounts/{id}/charges", "get", 200, page)
        assert page["has_more"] is True
        assert [c["period_start"] for c in page["data"]] == ["2026-03-01", "2026-02-01"]
        rest = await client.get(
            "/v1/accounts/1/charges", params={"starting_after": str(page["data"][-1]["id"])}
        )
        last = await rest.json()
        assert [c["period_start"] for c in last["data"]] == ["2026-01-01"]
        assert last["has_more"] is False
        empty = await client.get("/v1/accounts/2/charges")
        assert (await empty.json())["data"] == []
        missing = await client.get("/v1/accounts/999/charges")
        apikit.check("/v1/accounts/{id}/charges", "get", 404, await missing.json())
        bad = await client.get("/v1/accounts/1/charges", params={"limit": "1000"})
        assert bad.status == 400
        apikit.check("/v1/accounts/{id}/charges", "get", 400, await bad.json())


async def test_unknown_routes_and_ids_answer_stripe_shaped_404s(ready: Settings) -> None:
    async with apikit.api_client(ready) as client:
        for path in ("/v1/nothing", "/v1/jobs/abc", "/v1/jobs/99999999999999999999"):
            answer = await client.get(path)
            error = await answer.json()
            assert answer.status == 404, path
            assert error["error"]["code"] == "resource_missing"
            apikit.check("/v1/jobs/{id}", "get", 404, error)


@pytest.mark.parametrize(
    ("tokens", "line"),
    [
        (None, "BILLQ_API_TOKENS: required when --host is not a loopback address (0.0.0.0)"),
        (" , ", "BILLQ_API_TOKENS: must name at least one token"),
    ],
)
def test_billq_api_refuses_to_listen_off_loopback_without_a_token(
    tokens: str | None, line: str
) -> None:
    env = testkit.env_for(testkit.make_settings("unused", "unused"))
    if tokens is not None:
        env["BILLQ_API_TOKENS"] = tokens
    proc = testkit.billq("api", "--host", "0.0.0.0", env=env, check=False, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"billq: error: {line}"]
