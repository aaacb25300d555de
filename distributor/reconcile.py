"""Self-healing: repair jobs that stopped moving (also run before every distribution).

- ``processing`` held by nobody alive (lease expired or holder's heartbeat stale): take the
  job over (fencing), ask the gateway about its idempotency key; a charge that exists is
  recorded from the gateway's answer, anything else is released and republished.
- ``published`` / ``retrying`` unchanged for ``BILLQ_STUCK_AFTER`` seconds while the queues
  hold fewer messages than such jobs (messages were lost, e.g. a purged queue): republished.
  A deep but healthy backlog is left alone, so a slow month never doubles the queue.

A queue's depth counts ready messages only: a delivery a consumer holds (prefetched, not
yet claimed, so its job is still ``published``) is in none. Each lane consumer holds at most
its prefetch window (``BILLQ_CONCURRENCY``), so messages are proven lost only when the
queues and every window together cannot hold the waiting jobs. A smaller shortfall is
looked at only once nothing is queued: then each waiting job is lost or held, and held
deliveries are claimed within moments, so what is still untouched after ``HELD_CLAIM_S`` is
lost. (Counting ready messages alone, a long drain — its backlog older than
``BILLQ_STUCK_AFTER`` — had the whole backlog republished: copies every worker then had to
skip, and a few still queued when the run was done.)
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import structlog
from aio_pika.abc import AbstractConnection

from distributor.outbox import Outbox
from shared.amqp.inspect import queue_depths
from shared.config import Settings
from shared.db import jobs_repo, reconcile_repo
from shared.errors import BillqError
from shared.gateway.port import Charged, PaymentGateway

log = structlog.get_logger("billq.reconcile")

# Long enough for a worker to claim what its window holds (a batch wait, one claim).
HELD_CLAIM_S = 5.0


@dataclass
class ReconcileSummary:
    abandoned: int = 0
    completed_from_gateway: int = 0
    republished: int = 0
    lost_messages_suspected: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"reconcile: abandoned={self.abandoned} "
            f"completed_from_gateway={self.completed_from_gateway} "
            f"republished={self.republished}"
        )


async def reconcile(
    settings: Settings,
    pool: asyncpg.Pool,
    conn: AbstractConnection,
    outbox: Outbox,
    gateway: PaymentGateway,
    *,
    limit: int = 10_000,
) -> ReconcileSummary:
    summary = ReconcileSummary()
    for row in await reconcile_repo.abandoned(pool, limit):
        summary.abandoned += 1
        token = await reconcile_repo.take_over(pool, row["id"], row["attempts"])
        if token is None:
            continue  # its holder moved on meanwhile
        try:
            found = await gateway.find_by_idempotency_key(row["idempotency_key"])
        except BillqError as exc:
            log.warning("reconcile.gateway_lookup_failed", job_id=row["id"], error=str(exc))
            found = None
        if isinstance(found, Charged):
            landed = await jobs_repo.record_successes(pool, [(row["id"], token, found.charge_id)])
            if landed:
                summary.completed_from_gateway += 1
                log.info(
                    "reconcile.completed_from_gateway",
                    job_id=row["id"],
                    account_id=row["account_id"],
                    charge_id=found.charge_id,
                )
                continue
        if await reconcile_repo.release(pool, row["id"], token, "abandoned by its worker"):
            await outbox.publish_one(row, handoff=token)
            summary.republished += 1
            log.info("reconcile.republished", job_id=row["id"], account_id=row["account_id"])

    stalled = await _lost(settings, pool, conn, limit)
    if stalled:
        summary.lost_messages_suspected = True
        for row in stalled:
            handoff = row["attempts"] if row["state"] == "retrying" else None
            await outbox.publish_one(row, handoff=handoff)
            summary.republished += 1
        await reconcile_repo.touch(pool, [r["id"] for r in stalled])
        log.warning("reconcile.republished_stalled", jobs=len(stalled))
    return summary


async def _lost(
    settings: Settings, pool: asyncpg.Pool, conn: AbstractConnection, limit: int
) -> list[asyncpg.Record]:
    """The stalled jobs to republish: none unless messages are missing (see the docstring)."""
    waiting = await reconcile_repo.open_waiting(pool)
    if not waiting:
        return []
    depths = [d for d in await queue_depths(conn, settings) if d.role != "dead"]
    queued = sum(d.ready for d in depths)
    windows = settings.concurrency * sum(d.consumers for d in depths if d.role != "retry")
    if queued >= waiting:
        return []
    log.info("reconcile.shortfall", waiting=waiting, queued=queued, held_at_most=windows)
    if queued + windows < waiting:
        return await reconcile_repo.stalled(pool, settings.stuck_after, limit)
    if queued:
        return []  # consumers' windows may hold the difference: nothing is proven lost
    candidates = await reconcile_repo.stalled(pool, settings.stuck_after, limit)
    if not candidates:
        return []
    await asyncio.sleep(HELD_CLAIM_S)
    return await reconcile_repo.still_stalled(pool, candidates)
