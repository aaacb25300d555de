"""Self-healing: repair jobs that stopped moving (also run before every distribution).

- ``processing`` held by nobody alive (lease expired or holder's heartbeat stale): take the
  job over (fencing), ask the gateway about its idempotency key; a charge that exists is
  recorded from the gateway's answer, anything else is released and republished.
- a refund job's key is looked up among its charge's refunds (``find_refund``) instead:
  when it is held by nobody alive, and when it may have been sent but holds no refund row
  (retrying, dead in the last ``REFUND_LOOKBACK_DAYS``, revived by an operator). A refund
  found is recorded (refund, credit note, job succeeded) — ``refunds_recovered``: money
  given back is never left unrecorded until the next audit.
- a one-off or refund job (no run) left ``pending`` by an API process that died between its
  commit and its publish, once older than ``BILLQ_PUBLISH_TIMEOUT`` (its creator's own
  publish may still be waiting for its confirm): published. ``distribute`` publishes such
  jobs only here, by the same rule; its outbox repair is for the runs' jobs.
- ``published`` / ``retrying`` unchanged for ``BILLQ_STUCK_AFTER`` seconds while the queues
  hold fewer messages than such jobs (messages were lost, e.g. a purged queue): republished.
  A deep but healthy backlog is left alone, so a slow month never doubles the queue.

A queue's depth counts ready messages only: a delivery a consumer holds (prefetched, not
yet claimed, so its job is still ``published``) is in none. Each lane consumer holds at most
its prefetch window (``BILLQ_PREFETCH``), so messages are proven lost only when the
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
from shared.db import jobs_repo, reconcile_repo, refunds_repo
from shared.errors import ActionRefused, BillqError
from shared.gateway.port import Charged, ChargeOutcome, PaymentGateway, Refunded

log = structlog.get_logger("billq.reconcile")

# Long enough for a worker to claim what its window holds (a batch wait, one claim).
HELD_CLAIM_S = 5.0
# How long a dead refund job is still asked about: a call its worker gave up on can only
# have run around the time it died; older ones are left to ``billq audit``.
REFUND_LOOKBACK_DAYS = 7


@dataclass
class ReconcileSummary:
    abandoned: int = 0
    completed_from_gateway: int = 0
    republished: int = 0
    lost_messages_suspected: bool = False
    refunds_recovered: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"reconcile: abandoned={self.abandoned} "
            f"completed_from_gateway={self.completed_from_gateway} "
            f"republished={self.republished} "
            f"refunds_recovered={self.refunds_recovered}"
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
        found = await _look_up(gateway, row)
        if isinstance(found, Refunded):
            if await _record_refund(pool, row["id"], token, found):
                summary.refunds_recovered += 1
                continue
        elif isinstance(found, Charged):
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

    summary.refunds_recovered += await _recover_refunds(pool, gateway, limit)
    summary.republished += await _repair_api_outbox(settings, pool, outbox, limit)

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


async def _repair_api_outbox(
    settings: Settings, pool: asyncpg.Pool, outbox: Outbox, limit: int
) -> int:
    """Publish every job of no run its creator left pending past its confirm wait, a page of
    ``limit`` at a time (``distribute`` publishes them only here)."""
    total, after = 0, 0
    while rows := await reconcile_repo.unpublished_outside_runs(
        pool, settings.publish_timeout, limit, after
    ):
        total += await outbox.publish(rows)
        after = rows[-1]["id"]
    if total:
        log.info("reconcile.outbox_repaired", jobs=total)
    return total


async def _lost(
    settings: Settings, pool: asyncpg.Pool, conn: AbstractConnection, limit: int
) -> list[asyncpg.Record]:
    """The stalled jobs to republish: none unless messages are missing (see the docstring)."""
    waiting = await reconcile_repo.open_waiting(pool)
    if not waiting:
        return []
    depths = [d for d in await queue_depths(conn, settings) if d.role != "dead"]
    queued = sum(d.ready for d in depths)
    windows = settings.prefetch_window * sum(d.consumers for d in depths if d.role != "retry")
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


async def _look_up(gateway: PaymentGateway, row: asyncpg.Record) -> ChargeOutcome | Refunded | None:
    """What the gateway holds under an abandoned job's key (None when it cannot say)."""
    try:
        if row["kind"] == "refund":
            if row["refund_charge"] is None:
                return None
            return await gateway.find_refund(row["refund_charge"], row["idempotency_key"])
        return await gateway.find_by_idempotency_key(row["idempotency_key"])
    except BillqError as exc:
        log.warning("reconcile.gateway_lookup_failed", job_id=row["id"], error=str(exc))
        return None


async def _record_refund(pool: asyncpg.Pool, job_id: int, token: int, found: Refunded) -> bool:
    try:
        landed = await refunds_repo.record_refund(pool, job_id, token, found.refund_id)
    except ActionRefused as exc:  # beyond the charge: left to the audit, which lists it
        log.error("reconcile.refund_unrecorded", job_id=job_id, error=str(exc))
        return False
    if landed:
        log.warning("reconcile.refund_recovered", job_id=job_id, refund_id=found.refund_id)
    return landed


async def _recover_refunds(pool: asyncpg.Pool, gateway: PaymentGateway, limit: int) -> int:
    """Record the refunds the gateway made for jobs that hold none and are not in flight.
    The job is taken only once its refund is found, so a job the gateway holds nothing for
    keeps its state and its message."""
    recovered = 0
    for row in await reconcile_repo.unrecorded_refunds(pool, REFUND_LOOKBACK_DAYS, limit):
        try:
            found = await gateway.find_refund(row["gateway_charge_id"], row["idempotency_key"])
        except BillqError as exc:
            log.warning("reconcile.gateway_lookup_failed", job_id=row["id"], error=str(exc))
            return recovered  # the gateway is not answering: the next reconcile asks again
        if found is None:
            continue
        token = await reconcile_repo.take_refund(pool, row["id"], row["attempts"], row["state"])
        if token is not None and await _record_refund(pool, row["id"], token, found):
            recovered += 1
    return recovered
