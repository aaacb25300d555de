"""A delivery whose retry or dead-letter copy cannot be published still finishes: the
original goes back to the queue and its ack frontier moves on (no stuck head)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared.config import load_settings
from worker.acks import AckFrontier
from worker.consumer import Consumer
from worker.handler import Handler
from worker.outcome import Dead, Outcome, Retry
from worker.stats import Stats

pytestmark = pytest.mark.unit


class FakeChannel:
    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []

    async def get_underlay_channel(self) -> FakeChannel:
        return self

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append((tag, multiple))


class FakeMessage:
    def __init__(self, tag: int) -> None:
        self.delivery_tag = tag
        self.consumer_tag = "ctag"
        self.headers: dict[str, Any] = {}
        self.body = b"{}"
        self.message_id = f"m{tag}"
        self.type = "charge"
        self.content_type = "application/json"
        self.nacks: list[bool] = []

    async def nack(self, requeue: bool = True) -> None:
        self.nacks.append(requeue)


class ExplodingPublisher:
    """Raises what no billq edge classified (as a library's internal error would)."""

    async def publish(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("channel in an unexpected state")


@pytest.mark.parametrize("outcome", [Retry(5, None, "gateway 503"), Dead("Fatal", "bad card")])
async def test_an_unpublishable_copy_requeues_the_original_and_frees_the_frontier(
    outcome: Outcome,
) -> None:
    consumer = Consumer(load_settings(), cast(Handler, None), Stats())
    consumer._publisher = cast(Any, ExplodingPublisher())
    channel = FakeChannel()
    frontier = AckFrontier(cast(AbstractChannel, channel))
    first, second = FakeMessage(1), FakeMessage(2)
    for m in (first, second):
        frontier.delivered(m.delivery_tag)
    consumer._busy["bulk"] = 2
    consumer._stats.in_flight = 2

    await consumer._settle(cast(AbstractIncomingMessage, first), outcome, frontier, 0.0)
    await consumer._settle(
        cast(AbstractIncomingMessage, second), Retry(0, None, "x"), frontier, 0.0
    )
    await asyncio.wait_for(frontier.flushed(), 5)

    assert first.nacks == [True] and second.nacks == [True]
    assert frontier.waiting == 0  # neither holds the frontier
    assert channel.acks == []  # nothing acked: both come back from the queue
    assert consumer._stats.in_flight == 0
