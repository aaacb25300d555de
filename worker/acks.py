"""Ack a channel's deliveries: one ``multiple`` ack per finished prefix, single acks for
finished deliveries stuck behind a straggler.

A quorum queue turns every ack into a Raft command, and aiormq into a frame and a future:
per-delivery acks cost the broker more than the rest of a charge. A ``multiple`` ack of
tag T settles every outstanding delivery up to T, so it may only be sent once *every*
delivery up to T is finished — committed (then acked) or already settled on its own
(a nack that requeues). Deliveries finish out of order; the frontier acks the longest
finished prefix, one flush at a time so that acks leave in increasing order (RabbitMQ closes
the channel on a ``multiple`` ack of a tag it no longer holds).

A finisher never waits for that turn: it records its tag and, if a flush is under way, leaves
it to that flush, which goes round again before it ends. (Waiting on a lock instead, every
finished delivery stayed alive — message, job, frames — until its turn came, long after the
broker had its ack and refilled the window: a CPU-starved worker held thousands of them.)

But one slow charge (a gateway's 3 s tail) at the head would hold every finished delivery
behind it unacked, and once they fill the prefetch window the broker stops delivering: the
tail would set the throughput. So finished deliveries behind a head older than
``straggler_s``, or too many of them, are acked one by one (and passed over like a nack
when the prefix reaches them). Whichever is cheaper: in order, one ack per prefix; behind
a straggler, a single ack each rather than a stalled window.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable

import structlog
from aio_pika.abc import AbstractChannel

log = structlog.get_logger("billq.worker")

STRAGGLER_S = 0.25  # a head older than this no longer holds the finished ones behind it
BLOCKED_MAX = 64  # nor do more finished deliveries than this wait behind any head
# Settled tags behind an unfinished head are forgotten once more than this many wait.
FORGET_SETTLED_AFTER = 1024


class AckFrontier:
    """One per channel: ``delivered`` in arrival order, ``finished`` when done."""

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        straggler_s: float | None = STRAGGLER_S,
        blocked_max: int = BLOCKED_MAX,
    ) -> None:
        self.channel = channel
        self._straggler_s = straggler_s
        self._blocked_max = blocked_max
        self._outstanding: deque[int] = deque()
        self._since: dict[int, float] = {}
        self._ackable: set[int] = set()
        self._settled: set[int] = set()
        self._flushing = False
        self._again = False
        self._recheck: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def delivered(self, tag: int) -> None:
        self._outstanding.append(tag)
        self._since[tag] = time.monotonic()

    async def finished(self, ackable: Iterable[int], settled: Iterable[int] = ()) -> None:
        """Record finished deliveries, ack the finished prefix with one ``multiple`` ack, and
        the finished ones behind a straggler singly.

        ``settled``: deliveries already nacked on their own; never covered by an ack before
        they are recorded here.
        """
        self._ackable.update(ackable)
        self._settled.update(settled)
        # Deliveries that finish together (one group commit) resume in the same loop
        # iteration: let them all record themselves, so one ack covers them.
        await asyncio.sleep(0)
        await self._flush()

    async def _flush(self) -> None:
        if self._flushing:
            self._again = True  # the flush under way takes these on its next round
            return
        self._flushing = True
        try:
            self._again = True
            while self._again:
                self._again = False
                await self._flush_once()
        finally:
            self._flushing = False

    async def _flush_once(self) -> None:
        last = None
        while self._outstanding:
            head = self._outstanding[0]
            if head in self._ackable:
                self._ackable.discard(head)
                last = head
            elif head in self._settled:
                self._settled.discard(head)
            else:
                break
            self._outstanding.popleft()
            self._since.pop(head, None)
        if last is not None:
            await self._ack(last, multiple=True)
        if self._ackable and self._straggler_s is not None:
            await self._unblock()

    async def _unblock(self) -> None:
        """Single acks for finished deliveries behind an unfinished head that is too old."""
        assert self._straggler_s is not None
        head_age = time.monotonic() - self._since.get(self._outstanding[0], time.monotonic())
        if head_age < self._straggler_s and len(self._ackable) < self._blocked_max:
            # Not yet: look again when the head turns into a straggler.
            if self._recheck is None:
                self._recheck = asyncio.get_running_loop().call_later(
                    self._straggler_s - head_age, self._schedule_recheck
                )
            return
        blocked = sorted(self._ackable)
        self._ackable.clear()
        for tag in blocked:
            await self._ack(tag, multiple=False)
        self._settled.update(blocked)  # the prefix passes over them like nacked ones
        self._forget_settled()

    def _forget_settled(self) -> None:
        """Drop settled deliveries from the line once they outnumber the open ones (and
        ``FORGET_SETTLED_AFTER``): a head that takes long, or never finishes, must not keep
        every tag delivered after it. The prefix would only have passed over them."""
        still_open = len(self._outstanding) - len(self._settled)
        if len(self._settled) <= max(FORGET_SETTLED_AFTER, still_open):
            return
        self._outstanding = deque(t for t in self._outstanding if t not in self._settled)
        for tag in self._settled:
            self._since.pop(tag, None)
        self._settled.clear()

    def _schedule_recheck(self) -> None:
        self._recheck = None
        task = asyncio.get_running_loop().create_task(self._flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ack(self, tag: int, *, multiple: bool) -> None:
        try:
            underlay = await self.channel.get_underlay_channel()
            await underlay.basic_ack(tag, multiple=multiple)
        except Exception as exc:
            # The channel is gone: the broker redelivers, and the claim sorts it out.
            log.info("ack.failed", error=type(exc).__name__, will_be_redelivered=True)

    async def flushed(self) -> None:
        """Wait for the flushes no finisher awaits (the straggler re-checks): a finisher may
        have left its tag to one of them. For a clean shutdown."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    @property
    def held(self) -> int:
        """Deliveries the frontier still keeps track of (what tests look at)."""
        return len(self._outstanding)

    @property
    def waiting(self) -> int:
        """Deliveries not yet acked or settled (what tests look at)."""
        return len(self._outstanding) - len(self._settled & set(self._outstanding))
