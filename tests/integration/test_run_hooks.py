"""Run hooks against a real local HTTP receiver that refuses the first attempts: a signed
event per settled run, sent exactly when the run settles, retried with backoff under one
event id (the receiver's de-duplication key)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import testkit
from aiohttp import web
from pydantic import SecretStr

from distributor.run import distribute
from shared import hooks
from shared.config import Settings
from shared.db import runs_repo
from shared.db.pool import create_pool
from shared.errors import BadSignature

pytestmark = pytest.mark.integration

MARCH = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
SECRET = "whsec_test"


@dataclass
class Receiver:
    """Answers 500 to the first ``refuse`` requests, then 200; keeps every request."""

    url: str = ""
    refuse: int = 2
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=500 if len(self.requests) <= self.refuse else 200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = testkit.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rec.url = f"http://127.0.0.1:{port}/hooks"
    yield rec
    await runner.cleanup()


async def finish_in_sql(db: asyncpg.Connection, account_id: int) -> None:
    """A worker's record, as far as the run is concerned: a charge and a succeeded job."""
    await db.execute(
        "INSERT INTO charges (job_id, account_id, period_start, period_end, amount_cents,"
        " currency, idempotency_key, gateway_charge_id)"
        " SELECT id, account_id, period_start, period_end, amount_cents, currency,"
        " idempotency_key, 'ch_' || id FROM billing_jobs WHERE account_id = $1",
        account_id,
    )
    await db.execute(
        "UPDATE billing_jobs SET state = 'succeeded', finished_at = now() WHERE account_id = $1",
        account_id,
    )


async def test_a_settled_run_is_posted_signed_and_retried_under_one_event_id(
    settings: Settings, db: asyncpg.Connection, receiver: Receiver
) -> None:
    hooked = settings.model_copy(
        update={"run_webhook_url": receiver.url, "webhook_secret": SecretStr(SECRET)}
    )
    await testkit.seed(db, 2)
    run = await distribute(hooked, as_of=MARCH)  # publishes; the distributor delivers too
    pool = await create_pool(hooked, min_size=1, max_size=2)
    try:

        async def settle_and_deliver() -> hooks.Delivery:
            await runs_repo.settle_open_runs(pool)
            return await hooks.deliver_due(pool, hooked)

        # Not before the run settles: one job is still open.
        await finish_in_sql(db, 1)
        assert await settle_and_deliver() == hooks.Delivery(0, 0)
        assert receiver.requests == []

        await finish_in_sql(db, 2)
        assert await settle_and_deliver() == hooks.Delivery(delivered=0, failed=1)
        # Backoff: the next attempt is not due yet, so nothing is sent.
        row = await db.fetchrow(
            "SELECT attempts, next_attempt_at > now() + interval '5 s' AS later, last_error"
            " FROM run_hook_events WHERE run_id = $1",
            run.run_id,
        )
        assert row is not None
        assert row["attempts"] == 1 and row["later"] and "500" in row["last_error"]
        assert await settle_and_deliver() == hooks.Delivery(0, 0)
        assert len(receiver.requests) == 1

        outcomes = []
        for _ in range(2):  # as if the backoff had elapsed
            await db.execute("UPDATE run_hook_events SET next_attempt_at = now()")
            outcomes.append(await settle_and_deliver())
        assert outcomes == [hooks.Delivery(0, 1), hooks.Delivery(1, 0)]
        await db.execute("UPDATE run_hook_events SET next_attempt_at = now()")
        assert await settle_and_deliver() == hooks.Delivery(0, 0)  # delivered: never again
    finally:
        await pool.close()

    assert len(receiver.requests) == 3
    bodies = {body for _, body in receiver.requests}
    assert len(bodies) == 1  # the same event, byte for byte
    for headers, body in receiver.requests:
        hooks.verify(body, headers[hooks.SIGNATURE_HEADER], SECRET.encode())
        with pytest.raises(BadSignature):
            hooks.verify(body, headers[hooks.SIGNATURE_HEADER], b"another secret")
    event = json.loads(bodies.pop())
    assert event["type"] == "run.completed" and event["id"].startswith("evt_")
    assert {h["Billq-Event-Id"] for h, _ in receiver.requests} == {event["id"]}
    assert event["data"]["run_id"] == run.run_id
    assert event["data"]["state"] == "completed"
    assert event["data"]["jobs"] == {"succeeded": 2}
    assert event["data"]["billed"] == {"USD": 1001 + 1002}
    assert dt.datetime.fromisoformat(event["data"]["as_of"]) == MARCH

    listed: list[dict[str, Any]] = json.loads(
        testkit.billq("runs", "--json", env=testkit.env_for(settings)).stdout
    )
    mine = next(r for r in listed if r["id"] == run.run_id)
    assert mine["hook"] == "delivered" and mine["hook_event_id"] == event["id"]
    assert mine["hook_attempts"] == 3


async def test_a_failed_run_and_a_reopened_run_each_get_their_own_event(
    settings: Settings, db: asyncpg.Connection
) -> None:
    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        failed = await runs_repo.create_run(pool, MARCH)
        await runs_repo.finish_run(pool, failed, "failed", 0, 0, "broker gone")
        empty = await runs_repo.create_run(pool, MARCH)
        await runs_repo.finish_run(pool, empty, "published", 0, 0, None)  # completes empty
        # Reopened (an operator retried a job) and settled again: a second event.
        await db.execute("UPDATE billing_runs SET state = 'published' WHERE id = $1", empty)
        await runs_repo.settle_run(pool, empty)
        # Without BILLQ_RUN_WEBHOOK_URL nothing is sent; the events wait.
        assert await hooks.deliver_due(pool, settings) == hooks.Delivery(0, 0)
    finally:
        await pool.close()
    rows = await db.fetch(
        "SELECT run_id, type, event_id, payload, state FROM run_hook_events ORDER BY id"
    )
    assert [(r["run_id"], r["type"], r["state"]) for r in rows] == [
        (failed, "run.failed", "pending"),
        (empty, "run.completed", "pending"),
        (empty, "run.completed", "pending"),
    ]
    assert len({r["event_id"] for r in rows}) == 3
    assert json.loads(rows[0]["payload"])["error"] == "broker gone"


async def test_runs_settled_before_a_webhook_url_was_set_are_skipped_not_sent_later(
    settings: Settings, db: asyncpg.Connection, receiver: Receiver
) -> None:
    receiver.refuse = 0
    hooked = settings.model_copy(
        update={"run_webhook_url": receiver.url, "webhook_secret": SecretStr(SECRET)}
    )
    await testkit.seed(db, 1)
    old = await distribute(settings, as_of=MARCH)  # no URL anywhere yet
    await finish_in_sql(db, 1)
    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        await runs_repo.settle_open_runs(pool)
        assert await hooks.deliver_due(pool, settings) == hooks.Delivery(0, 0)
        assert await db.fetchval("SELECT state FROM run_hook_events") == "pending"

        # The URL is set months later: the backlog is skipped, not posted.
        assert await hooks.deliver_due(pool, hooked) == hooks.Delivery(0, 0)
        assert receiver.requests == []

        # A run that settles from now on is sent.
        new = await db.fetchval("INSERT INTO billing_runs (as_of) VALUES (now()) RETURNING id")
        await db.execute(
            "UPDATE billing_runs SET state = 'completed', finished_at = now() WHERE id = $1", new
        )
        assert await hooks.deliver_due(pool, hooked) == hooks.Delivery(1, 0)
    finally:
        await pool.close()

    assert [json.loads(body)["data"]["run_id"] for _, body in receiver.requests] == [new]
    listed: list[dict[str, Any]] = json.loads(
        testkit.billq("runs", "--json", env=testkit.env_for(settings)).stdout
    )
    hook = {r["id"]: r["hook"] for r in listed}
    assert hook[old.run_id] == "skipped" and hook[new] == "delivered"
