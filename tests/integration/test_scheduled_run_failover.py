"""A scheduled run whose broker connection is lost mid-publish resumes on the next pass,
like the main run, instead of being marked failed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import aio_pika
import asyncpg
import pytest
import testkit

import distributor.run as run_module
from distributor.run import distribute, schedule
from distributor.summary import Summary
from shared.config import Settings

pytestmark = pytest.mark.integration

PERIOD = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


async def test_a_scheduled_run_interrupted_by_a_lost_broker_resumes_instead_of_failing(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await db.executemany(
        "INSERT INTO accounts (id, name, email, amount_cents, currency, billing_interval,"
        " billing_anchor_day, next_billing_at, status, payment_method)"
        " VALUES ($1, $2, $3, 1000, 'USD', 'month', 1, $4, 'active', 'pm_card_visa')",
        [(i, f"c{i}", f"c{i}@example.com", PERIOD) for i in range(1, 6)],
    )
    scheduled = await schedule(settings, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    real_scan, calls = run_module._scan, []

    async def scan_losing_the_broker_once(*args: Any) -> None:
        calls.append(next(a.run_id for a in args if isinstance(a, Summary)))
        if len(calls) == 1:  # the scheduled run's first scan: the broker goes away
            raise aio_pika.exceptions.AMQPConnectionError("Server connection reset")
        await real_scan(*args)

    monkeypatch.setattr(run_module, "_scan", scan_losing_the_broker_once)
    summary = await distribute(settings, as_of=PERIOD - dt.timedelta(days=365))

    assert calls[:2] == [scheduled.run_id, scheduled.run_id], calls  # resumed, same run
    assert summary.scheduled_runs == [scheduled.run_id]
    run = await testkit.fetchrow(
        db, "SELECT state, error FROM billing_runs WHERE id = $1", scheduled.run_id
    )
    assert run["state"] == "published", run
    jobs = await db.fetchval(
        "SELECT count(*) FROM billing_jobs WHERE run_id = $1", scheduled.run_id
    )
    assert jobs == 5
