"""The priority lane against the real RabbitMQ and Postgres: dunning retries travel
``{prefix}.charge.priority``, workers take them ahead of a bulk backlog without starving it,
and a priority message keeps its lane through retries, dead letters, replays and repairs.

The worker runs in-process (``run_worker``, what the CLI runs). Order is read from the
database — which jobs finished before which — never from a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aio_pika
import asyncpg
import gatewaykit
import pytest
import testkit

from distributor.run import distribute, reconcile_once
from shared.amqp import names, topology
from shared.amqp.connection import connect_any
from shared.config import Settings
from shared.db.pool import create_pool
from shared.operations import replay_dead_letters
from worker.run import run_worker

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
DECLINE = "pm_card_chargeDeclinedInsufficientFunds"


@contextlib.asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    try:
        yield
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 60) == 0


async def open_jobs(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM billing_jobs"
            " WHERE state NOT IN ('succeeded', 'failed', 'dead', 'already_paid')"
        )
    )


async def settled(db: asyncpg.Connection, timeout: float = 120) -> None:
    async def done() -> bool:
        return await open_jobs(db) == 0

    await testkit.wait_until(done, timeout=timeout)


async def dunning_retries_due(s: Settings, db: asyncpg.Connection, n: int) -> dt.datetime:
    """Accounts 1..n declined once (soft) and now carry a working card: the time at which
    their dunning retries are due. Nothing is queued when it returns."""
    await testkit.seed(db, n, card=lambda i: DECLINE)
    await distribute(s, as_of=NOW)
    async with worker(s):
        await settled(db)
    assert await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state = 'failed'") == n
    await db.execute("UPDATE accounts SET payment_method = 'pm_card_visa'")
    retry_at: dt.datetime = await db.fetchval("SELECT max(dunning_next_at) FROM accounts")
    return retry_at + dt.timedelta(minutes=1)


async def depth(settings: Settings, queue: str) -> int:
    return (await testkit.queue_depths(settings)).get(queue, (0, 0))[0]


def hold(
    into: list[aio_pika.abc.AbstractIncomingMessage],
) -> Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]:
    """A consumer callback that keeps each delivery, unacked."""

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        into.append(message)

    return on_message


@pytest.fixture
def s(settings: Settings, gateway_url: str) -> Settings:
    return settings.model_copy(update={"gateway_url": gateway_url, "concurrency": 16})


async def test_dunning_retries_are_published_to_the_priority_queue_and_the_sweep_to_the_bulk_one(
    s: Settings, db: asyncpg.Connection
) -> None:
    retry_at = await dunning_retries_due(s, db, 3)
    await testkit.seed(db, 5, start=100)

    summary = await distribute(s, as_of=retry_at)

    p = s.queue_prefix
    assert summary.published == 8
    assert await depth(s, names.priority_queue(p)) == 3
    assert await depth(s, names.work_queue(p)) == 5


async def test_a_priority_charge_is_made_before_a_bulk_backlog_of_thousands_drains(
    s: Settings, db: asyncpg.Connection
) -> None:
    bulk = 3000
    retry_at = await dunning_retries_due(s, db, 1)
    await testkit.seed(db, bulk, start=100)
    await distribute(s, as_of=retry_at)
    assert await depth(s, names.work_queue(s.queue_prefix)) == bulk

    async with worker(s):
        await settled(db, timeout=300)

    # How many bulk charges were recorded before the dunning retry's.
    ahead = await db.fetchval(
        """
        SELECT count(*) FROM billing_jobs b, billing_jobs d
         WHERE d.dunning_attempt = 1 AND b.dunning_attempt = 0 AND b.account_id >= 100
           AND b.finished_at < d.finished_at
        """
    )
    assert await db.fetchval("SELECT state FROM billing_jobs WHERE dunning_attempt = 1") == (
        "succeeded"
    )
    # Behind the whole backlog it would be 3,000; its own lane puts it among the first.
    assert ahead < bulk // 10


async def test_the_bulk_lane_keeps_moving_while_the_priority_lane_has_work(
    s: Settings, db: asyncpg.Connection
) -> None:
    priority, bulk = 400, 400
    retry_at = await dunning_retries_due(s, db, priority)
    await testkit.seed(db, bulk, start=10_000)
    await distribute(s, as_of=retry_at)
    # 8 slots, 2 of them the priority lane's while both lanes have work.
    fair = s.model_copy(update={"concurrency": 8, "priority_share": 0.25})

    async with worker(fair):
        await settled(db, timeout=300)

    # Bulk charges recorded before the priority lane's backlog was half done.
    midway = await db.fetchval(
        """
        SELECT finished_at FROM billing_jobs WHERE dunning_attempt = 1
         ORDER BY finished_at OFFSET $1 LIMIT 1
        """,
        priority // 2,
    )
    bulk_by_then = await db.fetchval(
        "SELECT count(*) FROM billing_jobs WHERE account_id >= 10000 AND finished_at < $1",
        midway,
    )
    # Strict priority would leave it near 0; with 6 of 8 slots the bulk lane outpaces it.
    assert bulk_by_then >= priority // 2


async def test_a_retried_priority_message_goes_back_to_the_priority_lane_and_its_dead_letter_replays_there(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    p = settings.queue_prefix
    async with gatewaykit.sandbox(tmp_path / "ledger.sqlite3") as ok_url:
        s = settings.model_copy(update={"gateway_url": ok_url})
        retry_at = await dunning_retries_due(s, db, 1)
    async with gatewaykit.sandbox(tmp_path / "failing.sqlite3", fail_rate=1) as url:
        failing = settings.model_copy(
            update={"gateway_url": url, "max_attempts": 2, "retry_delays": [5.0]}
        )
        await distribute(failing, as_of=retry_at)
        async with worker(failing):

            async def retry_waits_in_its_lane() -> bool:
                return await depth(failing, names.priority_retry_queue(p, 5)) == 1

            await testkit.wait_until(retry_waits_in_its_lane, timeout=30, interval=0.05)
            assert await depth(failing, names.retry_queue(p, 5)) == 0

            async def dead() -> bool:
                return (
                    await db.fetchval("SELECT state FROM billing_jobs WHERE dunning_attempt = 1")
                    == "dead"
                    and await depth(failing, names.dead_letter_queue(p)) == 1
                )

            await testkit.wait_until(dead, timeout=30)
        assert (
            await db.fetchval("SELECT attempts FROM billing_jobs WHERE dunning_attempt = 1") == 2
        )  # the second attempt came back through the priority retry tier

        pool = await create_pool(failing, min_size=1, max_size=2)
        conn = await connect_any(failing.amqp_urls)
        try:
            result = await replay_dead_letters(pool, conn, failing, None, "test")
        finally:
            await conn.close()
            await pool.close()

    assert len(result["replayed"]) == 1 and len(result["jobs_revived"]) == 1
    assert await depth(failing, names.priority_queue(p)) == 1
    assert await depth(failing, names.work_queue(p)) == 0


async def test_a_dead_letter_names_its_lane(
    s: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    from shared.amqp import dlq

    retry_at = await dunning_retries_due(s, db, 1)
    # The job's account vanishes: its dunning retry is dead-lettered with the reason.
    await distribute(s, as_of=retry_at)
    await db.execute("UPDATE accounts SET status = 'suspended'")
    async with worker(s):
        await settled(db)
    conn = await connect_any(s.amqp_urls)
    try:
        [letter] = await dlq.read(conn, s, 10)
    finally:
        await conn.close()
    assert letter.summary()["lane"] == "priority"


async def test_the_reconciler_republishes_a_lost_priority_message_to_the_priority_lane(
    s: Settings, db: asyncpg.Connection
) -> None:
    p = s.queue_prefix
    retry_at = await dunning_retries_due(s, db, 2)
    await distribute(s, as_of=retry_at)
    conn = await aio_pika.connect(testkit.AMQP)
    async with conn:
        channel = await conn.channel()
        await (await channel.get_queue(names.priority_queue(p))).purge()
    await db.execute(
        "UPDATE billing_jobs SET updated_at = now() - interval '1 hour' WHERE state = 'published'"
    )

    summary = await reconcile_once(s.model_copy(update={"stuck_after": 60.0}))

    assert summary is not None and summary.republished == 2
    assert await depth(s, names.priority_queue(p)) == 2
    assert await depth(s, names.work_queue(p)) == 0


async def test_the_reconciler_leaves_deliveries_a_consumer_holds_and_the_backlog_alone(
    s: Settings, db: asyncpg.Connection
) -> None:
    # A long drain: jobs published long ago, most still queued, some delivered to a
    # consumer (prefetched, not yet claimed: still 'published'). Only the ready ones show in
    # a queue's depth; counting those alone made the reconciler "find" lost messages and
    # republish the whole old backlog — copies left queued once every job was done.
    p, held = s.queue_prefix, 5
    retry_at = await dunning_retries_due(s, db, 8)
    await testkit.seed(db, 40, start=100)
    await distribute(s, as_of=retry_at)
    await db.execute(
        "UPDATE billing_jobs SET updated_at = now() - interval '1 hour' WHERE state = 'published'"
    )
    conn = await aio_pika.connect(testkit.AMQP)
    async with conn:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=held)
        delivered: list[aio_pika.abc.AbstractIncomingMessage] = []
        queue = await channel.get_queue(names.work_queue(p))
        await queue.consume(hold(delivered))  # unacked, as a worker's window holds them

        async def window_full() -> bool:
            return len(delivered) == held

        await testkit.wait_until(window_full, timeout=10, interval=0.05)

        summary = await reconcile_once(s.model_copy(update={"stuck_after": 60.0}))

        assert summary is not None and summary.republished == 0
        assert not summary.lost_messages_suspected
        assert await depth(s, names.work_queue(p)) == 40 - held
        assert await depth(s, names.priority_queue(p)) == 8

    # The consumer gone, what it held is back: every job has exactly one message.
    async def all_back() -> bool:
        return await depth(s, names.work_queue(p)) == 40

    await testkit.wait_until(all_back, timeout=10, interval=0.05)
    assert await depth(s, names.priority_queue(p)) == 8


async def test_the_reconciler_republishes_what_was_lost_while_a_consumer_holds_deliveries(
    s: Settings, db: asyncpg.Connection
) -> None:
    p, held = s.queue_prefix, 3
    await testkit.seed(db, 2, start=100)
    await distribute(s, as_of=NOW)
    await db.execute(
        "UPDATE billing_jobs SET updated_at = now() - interval '1 hour' WHERE state = 'published'"
    )
    conn = await aio_pika.connect(testkit.AMQP)
    async with conn:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=held)
        delivered: list[aio_pika.abc.AbstractIncomingMessage] = []
        await (await channel.get_queue(names.work_queue(p))).consume(hold(delivered))

        async def both_held() -> bool:
            return len(delivered) == 2

        await testkit.wait_until(both_held, timeout=10, interval=0.05)
        for message in delivered:
            await message.ack()  # acked without a claim: both messages are lost

        summary = await reconcile_once(s.model_copy(update={"stuck_after": 60.0}))

    assert summary is not None and summary.republished == 2
    assert await depth(s, names.work_queue(p)) == 2


async def test_the_topology_redeclares_over_a_deployment_that_had_no_priority_lane(
    settings: Settings,
) -> None:
    p = settings.queue_prefix
    conn = await aio_pika.connect(testkit.AMQP)
    async with conn:
        channel = await conn.channel()
        # What billq declared before the priority lane existed: the bulk queue and its tiers.
        work = await channel.declare_exchange(p, aio_pika.ExchangeType.DIRECT, durable=True)
        queue = await channel.declare_queue(
            names.work_queue(p),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": settings.delivery_limit,
                "x-dead-letter-exchange": names.dead_letter_exchange(p),
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        await queue.bind(work, routing_key=names.ROUTING_KEY)
        for delay in topology.retry_tiers(settings):
            await channel.declare_queue(
                names.retry_queue(p, delay),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": int(delay * 1000),
                    "x-dead-letter-exchange": p,
                    "x-dead-letter-routing-key": names.ROUTING_KEY,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )

        await topology.declare(channel, settings)
        await topology.declare(channel, settings)  # and again: idempotent
    depths = await testkit.queue_depths(settings)
    assert names.priority_queue(p) in depths
    assert all(names.priority_retry_queue(p, t) in depths for t in topology.retry_tiers(settings))
