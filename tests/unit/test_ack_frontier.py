"""The ack frontier without a broker: which ``multiple`` acks leave, in which order.

``tests/integration/test_ack_frontier.py`` checks the same rules against a real quorum queue;
here a fake channel records the acks, so every ordering can be tried quickly.
"""

from __future__ import annotations

import asyncio
import random
from typing import cast

import pytest
import structlog
from aio_pika.abc import AbstractChannel

from worker.acks import FORGET_SETTLED_AFTER, AckFrontier

pytestmark = pytest.mark.unit


class FakeChannel:
    """Records ``basic_ack(tag, multiple)``; can be made to fail like a closed channel."""

    def __init__(self, *, broken: bool = False) -> None:
        self.acks: list[tuple[int, bool]] = []
        self.broken = broken

    async def get_underlay_channel(self) -> FakeChannel:
        return self

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        await asyncio.sleep(0)  # another finisher may run meanwhile, as with a real frame
        if self.broken:
            raise RuntimeError("channel closed")
        self.acks.append((tag, multiple))


def frontier(channel: FakeChannel, tags: range) -> AckFrontier:
    f = AckFrontier(cast(AbstractChannel, channel))
    for tag in tags:
        f.delivered(tag)
    return f


async def test_only_the_finished_prefix_is_acked_with_one_multiple_ack() -> None:
    channel = FakeChannel()
    f = frontier(channel, range(1, 7))

    await f.finished([2, 3])  # 1 still open: nothing may be acked
    assert channel.acks == []
    await f.finished([1])  # 1..3 finished
    await f.finished([5, 6])  # 4 still open: 5 and 6 wait

    assert channel.acks == [(3, True)]
    assert f.waiting == 3


async def test_a_settled_delivery_is_passed_over_and_never_the_acked_tag() -> None:
    channel = FakeChannel()
    f = frontier(channel, range(1, 5))

    await f.finished([1, 3], settled=[2])
    assert channel.acks == [(3, True)]
    await f.finished([], settled=[4])  # nothing left to ack: no frame at all

    assert channel.acks == [(3, True)]
    assert f.waiting == 0


async def test_concurrent_finishers_ack_in_increasing_order_and_cover_everything() -> None:
    channel = FakeChannel()
    tags = list(range(1, 201))
    f = frontier(channel, range(1, 201))
    random.Random(7).shuffle(tags)

    await asyncio.gather(*(f.finished([t]) for t in tags))

    acked = [tag for tag, _ in channel.acks]
    assert acked == sorted(acked)
    assert acked[-1] == 200
    assert all(multiple for _, multiple in channel.acks)
    assert f.waiting == 0


async def test_an_ack_on_a_closed_channel_is_logged_and_not_raised() -> None:
    f = frontier(FakeChannel(broken=True), range(1, 3))

    with structlog.testing.capture_logs() as logs:
        await f.finished([1, 2])

    assert logs == [
        {
            "event": "ack.failed",
            "log_level": "info",
            "error": "RuntimeError",
            "will_be_redelivered": True,
        }
    ]


class SlowAckChannel(FakeChannel):
    """An ack takes a few loop turns, like aiormq's frame through the writer and its drain."""

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        self.acks.append((tag, multiple))


async def test_finishers_never_queue_up_behind_acks_while_the_broker_refills_the_window() -> None:
    # The soak's shape: a head that does not finish (a slow charge), so every finished
    # delivery behind it is acked singly, and each ack frees a prefetch slot the broker fills
    # at once. A finisher that waited its turn to ack held its delivery (message, job, frames)
    # after the broker had its ack: the waiters grew without bound (6,678 in a worker after
    # 60,000 accounts). Now one flush runs at a time and the others leave their tags to it.
    channel = SlowAckChannel()
    f = AckFrontier(cast(AbstractChannel, channel), straggler_s=0.0)
    window, total = 64, 3 * FORGET_SETTLED_AFTER
    f.delivered(1)  # the head, unfinished throughout
    live: set[asyncio.Task[None]] = set()
    most_live = most_held = 0

    async def charge(tag: int) -> None:
        await asyncio.sleep(0)
        await f.finished([tag])

    tag = 1
    while tag < total or live:
        while tag < total and (tag - len(channel.acks)) < window:  # unacked < prefetch
            tag += 1
            f.delivered(tag)
            task = asyncio.create_task(charge(tag))
            live.add(task)
            task.add_done_callback(live.discard)
        most_live, most_held = max(most_live, len(live)), max(most_held, f.held)
        await asyncio.sleep(0)

    assert len(channel.acks) == total - 1  # everything behind the head, one by one
    assert most_live <= window + 1
    # Nor does the frontier keep every tag delivered behind the head it waits for.
    assert most_held <= FORGET_SETTLED_AFTER + 2 * window
    assert f.waiting == 1
    await f.finished([1])  # the head finishes at last: nothing else was left
    assert f.held == 0
    assert channel.acks[-1] == (1, True)


class GatedChannel(FakeChannel):
    """Each ack waits for ``gate``; ``entered`` says one is under way."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.entered = asyncio.Event(), asyncio.Event()

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.entered.set()
        await self.gate.wait()
        self.acks.append((tag, multiple))


async def test_a_tag_left_to_the_straggler_recheck_is_acked_before_flushed_returns() -> None:
    channel = GatedChannel()
    f = AckFrontier(cast(AbstractChannel, channel), straggler_s=0.001)
    for tag in (1, 2, 3):
        f.delivered(tag)

    await f.finished([2])  # the head is young: held, and a re-check is due when it is not
    await channel.entered.wait()  # the re-check (no finisher awaits it) is acking 2
    await f.finished([3])  # returns at once: 3 is left to the flush under way
    assert channel.acks == []
    channel.gate.set()
    await f.flushed()  # what a stopping worker waits for

    assert channel.acks == [(2, False), (3, False)]
    assert f.waiting == 1  # only the head
