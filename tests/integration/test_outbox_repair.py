"""One rule for the jobs of no run (one-offs and refunds the API created): ``distribute``
and ``reconcile`` both leave a job to its creator's own publish for
``BILLQ_PUBLISH_TIMEOUT``, then publish it; a run's pending jobs are republished at once."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest
import testkit

from distributor.run import distribute, reconcile_once
from shared import oneoff
from shared.amqp import names
from shared.config import Settings
from shared.db.pool import create_pool

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(settings, max_size=2)
    yield p
    await p.close()


async def depth(settings: Settings, queue: str) -> int:
    return (await testkit.queue_depths(settings)).get(queue, (0, 0))[0]


async def state(db: asyncpg.Connection, job_id: int) -> str:
    return str(await db.fetchval("SELECT state FROM billing_jobs WHERE id = $1", job_id))


async def unpublished_one_off(pool: asyncpg.Pool, account: int, key: str) -> int:
    """A one-off committed by the API, whose own publish has not happened (yet)."""
    ask = oneoff.parse({"account_id": account, "amount": 500, "currency": "USD"})
    created = await oneoff.create(pool, ask, key)
    assert created.job_id is not None
    return created.job_id


async def test_a_run_less_job_is_published_only_after_the_publish_timeout(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await testkit.seed(db, 2)
    await db.execute("UPDATE accounts SET next_billing_at = now() + interval '10 days'")
    fresh = await unpublished_one_off(pool, 1, "fresh-1")
    old = await unpublished_one_off(pool, 2, "old-1")
    await db.execute(
        "UPDATE billing_jobs SET created_at = now() - make_interval(secs => $2) WHERE id = $1",
        old,
        settings.publish_timeout + 60,
    )
    lane = names.priority_queue(settings.queue_prefix)

    summary = await distribute(settings, as_of=NOW)

    # The fresh one is its creator's to publish: not doubled while that publish may be under
    # way. The old one's creator is gone: published, once.
    assert (await state(db, fresh), await state(db, old)) == ("pending", "published")
    assert await depth(settings, lane) == 1
    assert summary.reconciled == 1 and summary.republished == 0 and summary.due == 0
    repaired = await reconcile_once(settings)  # the same rule
    assert repaired is not None and repaired.republished == 0
    assert (await state(db, fresh), await depth(settings, lane)) == ("pending", 1)

    await db.execute(
        "UPDATE billing_jobs SET created_at = now() - make_interval(secs => $2) WHERE id = $1",
        fresh,
        settings.publish_timeout + 60,
    )
    summary = await distribute(settings, as_of=NOW)

    assert await state(db, fresh) == "published" and await depth(settings, lane) == 2
    assert summary.reconciled == 1


async def test_a_runs_pending_job_is_republished_by_the_next_distribute_at_once(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await testkit.seed(db, 1)
    first = await distribute(settings, as_of=NOW)
    assert first.new_jobs == 1
    # Its run's publish was never confirmed: the job is still pending, no message queued.
    job = await db.fetchval("UPDATE billing_jobs SET state = 'pending' RETURNING id")
    work = names.work_queue(settings.queue_prefix)
    conn = await aio_pika.connect(testkit.AMQP)
    async with conn:
        await (await (await conn.channel()).get_queue(work)).purge()

    summary = await distribute(settings, as_of=NOW)

    assert summary.republished == 1 and summary.new_jobs == 0
    assert await state(db, job) == "published" and await depth(settings, work) == 1
