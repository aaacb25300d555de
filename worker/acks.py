"""Ack a channel's deliveries with one ``multiple`` ack per run of finished ones.

A quorum queue turns every ack into a Raft command, and aiormq into a frame and a future:
per-delivery acks cost the broker more than the rest of a charge. A ``multiple`` ack of
tag T settles every outstanding delivery up to T, so it may only be sent once *every*
delivery up to T is finished — committed (then acked) or already settled on its own
(a nack that requeues). Batches finish out of order; the frontier acks the longest
finished prefix, under a lock so that acks leave in increasing order (RabbitMQ closes the
channel on a ``multiple`` ack of a tag it no longer holds).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

import structlog
from aio_pika.abc import AbstractChannel

log = structlog.get_logger("billq.worker")


class AckFrontier:
    """One per channel: ``delivered`` in arrival order, ``finished`` when done."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self._outstanding: deque[int] = deque()
        self._ackable: set[int] = set()
        self._settled: set[int] = set()
        self._lock = asyncio.Lock()

    def delivered(self, tag: int) -> None:
        self._outstanding.append(tag)

    async def finished(self, ackable: Iterable[int], settled: Iterable[int] = ()) -> None:
        """Record finished deliveries and ack the finished prefix with one ``multiple`` ack.

        ``settled``: deliveries already nacked on their own; never covered by an ack before
        they are recorded here.
        """
        self._ackable.update(ackable)
        self._settled.update(settled)
        async with self._lock:
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
            if last is None:
                return
            try:
                underlay = await self.channel.get_underlay_channel()
                await underlay.basic_ack(last, multiple=True)
            except Exception as exc:
                # The channel is gone: the broker redelivers, and the claim sorts it out.
                log.info("ack.failed", error=type(exc).__name__, will_be_redelivered=True)

    @property
    def waiting(self) -> int:
        """Deliveries not yet acked or settled (what tests look at)."""
        return len(self._outstanding)
