"""The ack frontier against a real quorum queue: a ``multiple`` ack never covers a delivery
that has not finished, and finished deliveries are acked in one go."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
import testkit
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from worker.acks import AckFrontier

pytestmark = pytest.mark.integration
QUEUES: list[str] = []


@pytest.fixture
async def conn() -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(testkit.AMQP)
    try:
        yield connection
    finally:
        await connection.close()
        # Whatever the test left (a failing test stops before its own clean-up).
        cleanup = await aio_pika.connect(testkit.AMQP)
        async with cleanup:
            for name in QUEUES:
                ch = await cleanup.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await ch.queue_delete(name, if_unused=False, if_empty=False)
        QUEUES.clear()


@pytest.fixture
async def channel(conn: AbstractConnection) -> AbstractChannel:
    return await conn.channel()


async def _deliver(
    conn: AbstractConnection, channel: AbstractChannel, n: int, **frontier_args: Any
) -> tuple[AbstractQueue, list[AbstractIncomingMessage], AckFrontier]:
    queue = await channel.declare_queue(
        testkit.unique("bqt_acks"), durable=True, arguments={"x-queue-type": "quorum"}
    )
    QUEUES.append(queue.name)
    for i in range(n):
        await channel.default_exchange.publish(aio_pika.Message(str(i).encode()), queue.name)
    consuming = await conn.channel()
    await consuming.set_qos(prefetch_count=n)
    consumer = await consuming.get_queue(queue.name)
    got: list[AbstractIncomingMessage] = []
    done = asyncio.Event()

    async def on_message(m: AbstractIncomingMessage) -> None:
        got.append(m)
        if len(got) == n:
            done.set()

    await consumer.consume(on_message)
    await asyncio.wait_for(done.wait(), 10)
    # No straggler rule unless a test asks for it: it would ack on its own clock.
    frontier = AckFrontier(consumer.channel, **({"straggler_s": None} | frontier_args))
    for m in got:
        assert m.delivery_tag is not None
        frontier.delivered(m.delivery_tag)
    return consumer, got, frontier


async def _ready_after_close(
    channel: AbstractChannel, consumer: AbstractQueue, expected: int, timeout: float = 10
) -> int:
    """Close the consuming channel: whatever it had not acked becomes ready again.

    Polls the ready count until it is ``expected`` or ``timeout`` passes, and returns the last
    count seen. The broker returns a closed channel's unacked deliveries in one step, so the
    count goes from 0 straight to its final value: a wrong value never passes for ``expected``.
    """
    await consumer.channel.close()
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        queue = await channel.declare_queue(consumer.name, passive=True)
        ready = queue.declaration_result.message_count or 0
        if ready == expected or asyncio.get_running_loop().time() > deadline:
            return ready
        await asyncio.sleep(0.02)


def _tags(messages: list[AbstractIncomingMessage], *positions: int) -> list[int]:
    return [int(messages[p].delivery_tag or 0) for p in positions]


async def test_out_of_order_finishes_ack_only_the_finished_prefix(
    conn: AbstractConnection, channel: AbstractChannel
) -> None:
    consumer, got, frontier = await _deliver(conn, channel, 6)

    await frontier.finished(_tags(got, 1, 2))  # 0 still open: nothing may be acked
    assert frontier.waiting == 6
    await frontier.finished(_tags(got, 0))  # 0..2 finished: one multiple ack
    await frontier.finished(_tags(got, 4, 5))  # 3 still open: 4 and 5 wait
    assert frontier.waiting == 3

    assert await _ready_after_close(channel, consumer, 3) == 3  # 3, 4, 5 were never acked


async def test_a_requeued_delivery_is_passed_over_not_acked(
    conn: AbstractConnection, channel: AbstractChannel
) -> None:
    consumer, got, frontier = await _deliver(conn, channel, 4)

    await got[1].nack(requeue=True)  # settled on its own, as the consumer does
    await frontier.finished(_tags(got, 0, 2, 3), _tags(got, 1))
    assert frontier.waiting == 0

    # Only the requeued one comes back (redelivered to the still-open consumer channel).
    assert await _ready_after_close(channel, consumer, 1) == 1


async def test_finished_deliveries_behind_a_straggler_are_acked_singly(
    conn: AbstractConnection, channel: AbstractChannel
) -> None:
    # The head (0) is a slow charge: the finished ones behind it must not wait for it.
    consumer, got, frontier = await _deliver(conn, channel, 6, straggler_s=0.0)

    await frontier.finished(_tags(got, 2, 3, 5))
    assert frontier.waiting == 3  # 0, 1 and 4 are still open
    await frontier.finished(_tags(got, 0, 1))  # the prefix passes over the acked 2 and 3
    assert frontier.waiting == 1

    assert await _ready_after_close(channel, consumer, 1) == 1  # only 4 was never acked


async def test_a_young_head_holds_a_few_finished_deliveries_for_one_multiple_ack(
    conn: AbstractConnection, channel: AbstractChannel
) -> None:
    consumer, got, frontier = await _deliver(conn, channel, 6, straggler_s=3600.0)

    await frontier.finished(_tags(got, 1, 2, 3))
    assert frontier.waiting == 6  # held for the head, not acked one by one
    await frontier.finished(_tags(got, 0))
    assert frontier.waiting == 2
    assert await _ready_after_close(channel, consumer, 2) == 2
