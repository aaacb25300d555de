"""The confirming publisher against the real broker: one confirm ladder for one message and
for a window of many (delivered, returned, nacked on every channel)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
import testkit
from aio_pika.abc import AbstractConnection

from shared.amqp.publisher import Publisher
from shared.errors import PublishFailed, Unroutable

pytestmark = pytest.mark.integration


@pytest.fixture
async def conn() -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(testkit.AMQP)
    async with connection:
        yield connection


@contextlib.asynccontextmanager
async def queue(conn: AbstractConnection, **arguments: Any) -> AsyncIterator[str]:
    channel = await conn.channel()
    declared = await channel.declare_queue(
        testkit.unique("bqt_pub"), auto_delete=False, arguments=arguments
    )
    try:
        yield declared.name
    finally:
        await declared.delete(if_unused=False, if_empty=False)


async def ready(conn: AbstractConnection, name: str) -> int:
    channel = await conn.channel()
    declared = await channel.declare_queue(name, passive=True)
    return declared.declaration_result.message_count or 0


async def test_one_message_and_a_window_are_confirmed_and_delivered(
    conn: AbstractConnection,
) -> None:
    publisher = Publisher(conn, timeout=5)
    async with queue(conn) as name:
        await publisher.publish("", name, b"{}", message_id="one")
        await publisher.publish_many("", name, [(b"{}", f"m{i}", {"n": i}) for i in range(20)])

        assert await ready(conn, name) == 21
    await publisher.close()


async def test_a_message_nobody_can_receive_is_unroutable(conn: AbstractConnection) -> None:
    publisher = Publisher(conn, timeout=5)
    nowhere = testkit.unique("bqt_nowhere")

    with pytest.raises(Unroutable, match=nowhere):
        await publisher.publish("", nowhere, b"{}")
    with pytest.raises(Unroutable, match=nowhere):
        await publisher.publish_many("", nowhere, [(b"{}", "m1", None)])
    await publisher.close()


async def test_a_broker_that_nacks_on_every_channel_fails_the_publish_after_max_nacks(
    conn: AbstractConnection,
) -> None:
    publisher = Publisher(conn, timeout=5, max_nacks=2)
    # A full queue that rejects publishes: the broker nacks each one.
    async with queue(conn, **{"x-max-length": 0, "x-overflow": "reject-publish"}) as name:
        with pytest.raises(PublishFailed, match="nacked the publish 2 times"):
            await publisher.publish("", name, b"{}")
        with pytest.raises(PublishFailed, match="nacked the publish 2 times"):
            await publisher.publish_many("", name, [(b"{}", "m1", None), (b"{}", "m2", None)])
    # Each nack replaced the channel: the publisher goes on working on a fresh one.
    async with queue(conn) as name:
        await publisher.publish("", name, b"{}")
        assert await ready(conn, name) == 1
    await publisher.close()
