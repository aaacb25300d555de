"""Log lines operators alert on are a contract: their event names and fields are checked here.

The worker runs in-process (the ``run_worker`` the CLI runs) under structlog's
``capture_logs``, so each test reads the events themselves, not rendered text.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import gatewaykit
import pytest
import structlog
import testkit

from distributor.run import distribute
from shared.amqp import names
from shared.config import Settings, load_settings
from worker.run import run_worker

Events = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Events]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def named(logs: Events, *events: str) -> Events:
    return [e for e in logs if e["event"] in events]


@contextlib.asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[asyncio.Task[int]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    try:
        yield task
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


async def until_logged(logs: Events, event: str, count: int = 1, timeout: float = 30) -> Events:
    async def enough() -> bool:
        return len(named(logs, event)) >= count

    await testkit.wait_until(enough, timeout=timeout, interval=0.05)
    return named(logs, event)


@pytest.mark.integration
async def test_a_job_the_gateway_keeps_failing_logs_its_retry_then_its_death(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path, logs: Events
) -> None:
    async with gatewaykit.sandbox(tmp_path / "ledger.sqlite3", fail_rate=1) as url:
        s = settings.model_copy(update={"gateway_url": url, "max_attempts": 2})
        await testkit.seed(db, 1)
        await distribute(s, as_of=dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC))
        async with worker(s):
            await until_logged(logs, "job.dead")

    [retry] = named(logs, "job.retry_scheduled")
    [dead] = named(logs, "job.dead")
    job_id = await db.fetchval("SELECT id FROM billing_jobs")
    assert retry["log_level"] == "info"
    assert (retry["job_id"], retry["account_id"], retry["attempt"]) == (job_id, 1, 1)
    assert retry["delay_s"] == 1.0  # the first tier of BILLQ_RETRY_DELAYS
    assert "500" in retry["error"]
    assert dead["log_level"] == "warning"
    assert (dead["job_id"], dead["account_id"], dead["attempt"]) == (job_id, 1, 2)
    assert dead["error_class"] == "GatewayUnavailable"
    assert dead["reason"].startswith("gave up after 2 attempts: ")
    assert await db.fetchval("SELECT state FROM billing_jobs") == "dead"


@pytest.mark.integration
async def test_a_cancelled_consumer_is_logged_and_the_worker_consumes_again(
    settings: Settings, logs: Events
) -> None:
    async with worker(settings):
        await until_logged(logs, "worker.consuming")
        # Deleting the queue makes the broker cancel the worker's consumer.
        conn = await aio_pika.connect(testkit.AMQP)
        async with conn:
            channel = await conn.channel()
            await channel.queue_delete(
                names.work_queue(settings.queue_prefix), if_unused=False, if_empty=False
            )
        await until_logged(logs, "worker.consuming", count=2)

    lifecycle = named(logs, "worker.consuming", "worker.consumer_cancelled", "broker.reconnecting")
    assert [e["event"] for e in lifecycle] == [
        "worker.consuming",
        "worker.consumer_cancelled",
        "broker.reconnecting",
        "worker.consuming",
    ]
    assert named(logs, "worker.consumer_cancelled")[0]["log_level"] == "warning"
    [stopped] = named(logs, "worker.stopped")
    assert stopped["handled"] == 0


@pytest.mark.unit  # nothing listens where its database should be
async def test_a_worker_without_its_database_logs_each_wait_and_keeps_trying(
    settings_without_services: Settings, logs: Events
) -> None:
    async with worker(settings_without_services):
        waits = await until_logged(logs, "worker.waiting_for_database", count=3)

    for wait in waits:
        assert wait["log_level"] == "warning"
        assert wait["error"] == "DatabaseUnavailable"
        assert 0 < wait["retry_s"] <= 5  # a capped backoff, however it is drawn
    assert named(logs, "worker.started") == []


@pytest.fixture
def settings_without_services() -> Settings:
    nobody = f"postgresql://postgres@127.0.0.1:{testkit.free_port()}/billq"
    return load_settings(
        database_url=nobody, amqp_url=testkit.AMQP, queue_prefix=testkit.unique("bqt")
    )
