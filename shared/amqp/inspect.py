"""Read queue depths with passive declares (no management plugin needed)."""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractConnection

from shared.amqp import names, topology
from shared.config import Settings


@dataclass(frozen=True, slots=True)
class QueueDepth:
    name: str
    role: str  # work | priority | retry | dead
    ready: int
    consumers: int


async def queue_depths(conn: AbstractConnection, settings: Settings) -> list[QueueDepth]:
    """Depth of the work (bulk), priority, retry and dead-letter queues; missing queues
    (a priority lane not yet declared by an upgraded worker) are skipped."""
    p = settings.queue_prefix
    wanted = [(names.work_queue(p), "work"), (names.priority_queue(p), "priority")]
    wanted += [
        (names.lane_retry_queue(p, lane, t), "retry")
        for lane in names.LANES
        for t in topology.retry_tiers(settings)
    ]
    wanted.append((names.dead_letter_queue(p), "dead"))
    out = []
    for name, role in wanted:
        # A passive declare of a missing queue closes the channel: one channel per probe.
        channel = await conn.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            continue
        res = queue.declaration_result
        out.append(QueueDepth(name, role, res.message_count or 0, res.consumer_count or 0))
        await channel.close()
    return out
