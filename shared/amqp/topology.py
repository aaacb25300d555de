"""Declare billq's exchanges and queues idempotently (both sides do it at start-up).

- ``{p}``           direct work exchange; ``{p}.charge`` bound with key ``charge``.
- ``{p}.charge``    durable quorum queue, delivery limit, dead-letters to ``{p}.dlx``.
- ``{p}.charge.retry.<n>s``  one quorum queue per backoff tier: a fixed queue TTL dead-letters
                    back to the work exchange (RabbitMQ 3.10 ships no delayed exchange, and
                    per-message TTLs in one shared queue wait behind the head).
- ``{p}.charge.priority`` the priority lane: the same arguments, bound with key
                    ``charge.priority``, with its own ``{p}.charge.priority.retry.<n>s`` tiers
                    that dead-letter back to it (a retry stays in its lane). Added beside the
                    bulk queues, so existing deployments' queues are declared unchanged.
- ``{p}.dlx`` / ``{p}.charge.dead``  fanout dead-letter exchange and its queue; letters keep
                    their routing key, which names their lane.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from shared.amqp import names
from shared.config import Settings
from shared.errors import TopologyMismatch


@dataclass(frozen=True, slots=True)
class Topology:
    work: AbstractExchange
    dlx: AbstractExchange


def retry_tiers(settings: Settings) -> list[float]:
    return sorted({float(int(d)) or 1.0 for d in settings.retry_delays})


async def declare(channel: AbstractChannel, settings: Settings) -> Topology:
    """Declare everything; a queue that exists with other arguments is a configuration error.

    Raises:
        TopologyMismatch: RabbitMQ answered PRECONDITION_FAILED (e.g. BILLQ_DELIVERY_LIMIT
            changed against existing queues). Reconnecting cannot help: one clear line, exit 2.
    """
    try:
        return await _declare(channel, settings)
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        detail = str(exc.args[0] if exc.args else exc)
        raise TopologyMismatch(
            f"RabbitMQ refused the topology ({detail}): the queues exist with other "
            "arguments; restore the setting (BILLQ_DELIVERY_LIMIT?) or drain and delete "
            "the queue to redeclare it"
        ) from None


async def _declare(channel: AbstractChannel, settings: Settings) -> Topology:
    p = settings.queue_prefix
    work = await channel.declare_exchange(
        names.work_exchange(p), aio_pika.ExchangeType.DIRECT, durable=True
    )
    dlx = await channel.declare_exchange(
        names.dead_letter_exchange(p), aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead = await channel.declare_queue(
        names.dead_letter_queue(p), durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(dlx, routing_key="#")
    for lane in names.LANES:
        queue = await channel.declare_queue(
            names.lane_queue(p, lane),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                # Backstop for messages that crash workers; attempts are counted in Postgres.
                "x-delivery-limit": settings.delivery_limit,
                # No dead-letter routing key: a letter keeps its lane's key, so a replay
                # puts it back on the lane it came from.
                "x-dead-letter-exchange": names.dead_letter_exchange(p),
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        await queue.bind(work, routing_key=names.lane_routing_key(lane))
        for delay in retry_tiers(settings):
            await channel.declare_queue(
                names.lane_retry_queue(p, lane, delay),
                durable=True,
                # Quorum too: a classic queue lives on one node, and while that node is down
                # every redeclare (distributor start, worker reconnect) fails on the others.
                # Tiers per lane: each sends its copies back to its own lane's queue.
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": int(delay * 1000),
                    "x-dead-letter-exchange": names.work_exchange(p),
                    "x-dead-letter-routing-key": names.lane_routing_key(lane),
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
    return Topology(work=work, dlx=dlx)


def retry_tier_for(settings: Settings, delay: float) -> float:
    """The smallest declared tier at or above ``delay`` (the largest if none)."""
    tiers = retry_tiers(settings)
    return next((t for t in tiers if t >= delay), tiers[-1])
