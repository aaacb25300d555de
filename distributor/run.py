"""One distributor invocation: lock → repair the outbox → scan → insert jobs → publish.

The jobs table is the outbox: a job is inserted (``pending``) before anything is
published and marked ``published`` only after the broker confirmed its message.
A crash at any point leaves ``pending`` jobs that the next run publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from distributor.outbox import Outbox
from distributor.plan import DueAccount, Shard, blocked_reason, paced, plan_job
from distributor.reconcile import ReconcileSummary, reconcile
from distributor.summary import Summary
from shared import hooks
from shared.amqp import topology
from shared.amqp.connection import broker_lost, connect_any
from shared.amqp.publisher import Publisher
from shared.backoff import Backoff
from shared.billing.jobs import TERMINAL
from shared.config import Settings
from shared.db import accounts_repo, runs_repo
from shared.db.pool import connect, create_pool
from shared.errors import BillqError, BrokerUnavailable, PublishFailed, TransientError
from shared.gateway.factory import make_gateway

log = structlog.get_logger("billq.distributor")


async def distribute(
    settings: Settings,
    *,
    as_of: dt.datetime,
    dry_run: bool = False,
    batch_size: int | None = None,
    shard: Shard | None = None,
    explicit_as_of: bool = True,
) -> Summary:
    """Run one distribution. Raises ``BillqError`` subclasses on failure.

    ``explicit_as_of`` False (cron gave no --as-of): a shard joins the run its sibling shards
    of this tick opened and bills at that run's as-of.
    """
    started = time.perf_counter()
    batch = batch_size or settings.batch_size
    summary = Summary(run_id=None, as_of=as_of.isoformat(), dry_run=dry_run)
    lock_conn = await connect(settings)
    try:
        if not await runs_repo.try_lock(lock_conn, shard):
            summary.locked = True
            summary.state = "locked"
            return summary
        # A connection per publish window (each marks its batch published) and the scan's.
        pool = await create_pool(settings, min_size=1, max_size=PUBLISH_WINDOWS + 2)
        try:
            if dry_run:
                summary.due = await runs_repo.count_due(pool, as_of, shard)
                summary.state = "dry_run"
                return summary
            # Scheduled runs a pass has taken (state running): a pass that loses its broker
            # leaves them for the next pass to resume, as it does the main run.
            taken: list[tuple[int, dt.datetime]] = []
            await _with_broker_failover(
                len(settings.amqp_urls) + 1,
                summary,
                lambda may_resume: _distribute(
                    settings,
                    pool,
                    as_of,
                    batch,
                    shard,
                    summary,
                    taken,
                    may_resume=may_resume,
                    explicit_as_of=explicit_as_of,
                ),
            )
        finally:
            await _deliver_hooks(pool, settings)
            await pool.close()
    finally:
        await lock_conn.close()  # releases the advisory lock
    summary.duration_s = round(time.perf_counter() - started, 3)
    return summary


async def _deliver_hooks(pool: asyncpg.Pool, settings: Settings) -> None:
    """Runs this pass settled (failed, empty, orphans) announce themselves now; workers'
    heartbeats deliver the rest."""
    try:
        await hooks.deliver_due(pool, settings)
    except TransientError as exc:
        log.warning("distribute.hooks_failed", error=type(exc).__name__)


async def _with_broker_failover(
    attempts: int, summary: Summary, run_pass: Callable[[bool], Awaitable[None]]
) -> None:
    """Run a distribution pass; if the broker connection is lost, run it again (it connects
    to the next broker that answers), resuming the same run.

    Starting over is safe: jobs already inserted are in the outbox (``pending``) or
    published, and a new pass republishes the former and skips accounts that have a job.
    ``run_pass(may_resume)``: False on the last attempt, which fails the run clearly.
    """
    backoff = Backoff(base=0.5, cap=2.0)
    for attempt in range(1, attempts + 1):
        try:
            await run_pass(attempt < attempts)
            return
        except Exception as exc:
            lost = _lost_broker(exc)
            if attempt == attempts or not lost:
                if lost and not isinstance(exc, BillqError):
                    raise BrokerUnavailable(
                        f"broker connection lost {attempts} times during the run "
                        f"({type(exc).__name__}); the next run republishes what is pending"
                    ) from exc
                raise
            log.warning(
                "run.broker_lost",
                run_id=summary.run_id,
                attempt=attempt,
                error=f"{type(exc).__name__}: {exc}",
            )
            summary.new_jobs = summary.republished = summary.due = 0
            await asyncio.sleep(backoff.next())


def _lost_broker(exc: BaseException) -> bool:
    """A broker connection lost mid-run, which another pass on another broker may finish.

    Not BrokerUnavailable: connect_any has already tried every broker.
    """
    return (broker_lost(exc) or isinstance(exc, PublishFailed)) and not isinstance(
        exc, BrokerUnavailable
    )


async def _distribute(
    settings: Settings,
    pool: asyncpg.Pool,
    as_of: dt.datetime,
    batch: int,
    shard: Shard | None,
    summary: Summary,
    taken: list[tuple[int, dt.datetime]],
    *,
    may_resume: bool = False,
    explicit_as_of: bool = True,
) -> None:
    conn = await connect_any(settings.amqp_urls)
    try:
        channel = await conn.channel()
        await topology.declare(channel, settings)
        await channel.close()
        publisher = Publisher(conn, timeout=settings.publish_timeout)
        outbox = Outbox(pool, publisher, settings)
        if shard is None or shard[0] == 0:
            # Repairs and scheduled runs are done once, not by every shard.
            gateway = make_gateway(settings)
            try:
                repaired = await reconcile(settings, pool, conn, outbox, gateway)
            finally:
                await gateway.aclose()
            summary.reconciled = (
                repaired.republished + repaired.completed_from_gateway + repaired.refunds_recovered
            )
            await accounts_repo.apply_due_cancellations(pool)
            summary.republished = await _repair_outbox(pool, outbox, batch)
            summary.settled_runs = await runs_repo.settle_orphaned_runs(pool, summary.run_id)
            taken += await runs_repo.start_due_scheduled(pool)
            for run_id, run_as_of in taken:
                if run_id in summary.scheduled_runs:
                    continue  # performed by an earlier pass
                scheduled = Summary(run_id=run_id, as_of=run_as_of.isoformat())
                await _perform_run(
                    pool, outbox, run_as_of, batch, None, scheduled, may_resume=may_resume
                )
                summary.scheduled_runs.append(run_id)
        if summary.run_id is not None:
            log.info("run.resumed", run_id=summary.run_id)  # its first pass lost its broker
        elif shard is None:
            summary.run_id = await runs_repo.create_run(pool, as_of)
        else:
            summary.run_id, as_of = await runs_repo.join_or_create_run(
                pool, as_of, shard[1], explicit_as_of=explicit_as_of
            )
            summary.as_of = as_of.isoformat()
        await _perform_run(
            pool,
            outbox,
            as_of,
            batch,
            shard,
            summary,
            may_resume=may_resume,
            min_gap=settings.catchup_min_gap,
        )
    finally:
        await conn.close()


async def _perform_run(
    pool: asyncpg.Pool,
    outbox: Outbox,
    as_of: dt.datetime,
    batch: int,
    shard: Shard | None,
    summary: Summary,
    *,
    may_resume: bool = False,
    min_gap: float = 0.0,
) -> None:
    assert summary.run_id is not None
    log.info("run.started", run_id=summary.run_id, as_of=summary.as_of)
    try:
        await _scan(pool, outbox, as_of, batch, shard, summary, min_gap)
    except BaseException as exc:
        if may_resume and _lost_broker(exc):
            raise  # the run stays open: the next pass, on another broker, finishes it
        summary.state = "failed"
        await runs_repo.finish_run(
            pool,
            summary.run_id,
            "failed",
            summary.due,
            summary.published,
            f"{type(exc).__name__}: {exc}"[:1000],
        )
        log.error("run.failed", run_id=summary.run_id, error=str(exc))
        raise
    summary.published = summary.new_jobs + summary.republished
    await runs_repo.finish_run(
        pool, summary.run_id, "published", summary.due, summary.published, None
    )
    log.info("run.published", **summary.as_dict())


async def _repair_outbox(pool: asyncpg.Pool, outbox: Outbox, batch: int) -> int:
    """Publish jobs an earlier run inserted but never saw confirmed."""
    total, after = 0, 0
    while rows := await runs_repo.pending_batch(pool, after, batch):
        total += await outbox.publish(rows)
        after = rows[-1]["id"]
    if total:
        log.info("outbox.republished", jobs=total)
    return total


# Batches whose confirms may be outstanding at once. One would be stop-and-wait (the next
# batch's publish waits for the last confirm); a few keep the broker's confirm pipeline full
# while the next batch is planned and inserted, and bound what a failure leaves in flight.
PUBLISH_WINDOWS = 4


async def _scan(
    pool: asyncpg.Pool,
    outbox: Outbox,
    as_of: dt.datetime,
    batch: int,
    shard: Shard | None,
    summary: Summary,
    min_gap: float,
) -> None:
    assert summary.run_id is not None
    # Stages overlap: while earlier batches wait for their confirms, the next is read,
    # planned and inserted. Windows finish in order; a failure stops the run promptly.
    in_flight: deque[asyncio.Task[int]] = deque()
    try:
        async for rows in runs_repo.scan_due(pool, as_of, batch, shard, summary.run_id):
            inserted = await _plan_and_insert(pool, rows, summary, min_gap)
            while in_flight and (in_flight[0].done() or len(in_flight) >= PUBLISH_WINDOWS):
                summary.new_jobs += await in_flight.popleft()
            in_flight.append(asyncio.create_task(outbox.publish(inserted)))
        while in_flight:
            summary.new_jobs += await in_flight.popleft()
    finally:
        for task in in_flight:
            task.cancel()
        for task in in_flight:
            with contextlib.suppress(BaseException):
                await task


async def _plan_and_insert(
    pool: asyncpg.Pool, rows: list[asyncpg.Record], summary: Summary, min_gap: float
) -> list[asyncpg.Record]:
    assert summary.run_id is not None
    summary.due += len(rows)
    now = dt.datetime.now(dt.UTC)
    planned = []
    for r in rows:
        job = plan_job(
            DueAccount(
                r["id"],
                r["next_billing_at"],
                r["billing_interval"],
                r["billing_anchor_day"],
                r["amount_cents"],
                r["currency"],
                r["dunning_attempt"],
                r["payment_method"],
                r["gateway_customer"],
            )
        )
        if paced(job.period_start, r["last_period_start"], r["last_period_at"], now, min_gap):
            summary.paced += 1
            continue
        planned.append(job)
    cols: list[list[Any]] = [
        [p.account_id for p in planned],
        [p.period_start for p in planned],
        [p.period_end for p in planned],
        [p.idempotency_key for p in planned],
        [p.amount_cents for p in planned],
        [p.currency for p in planned],
        [p.dunning_attempt for p in planned],
        [p.payment_method for p in planned],
        [p.gateway_customer for p in planned],
    ]
    inserted = await runs_repo.insert_jobs(pool, summary.run_id, cols)
    future = sum(1 for p in planned if p.period_start > now.date())
    summary.future_periods += future
    blocked: list[dict[str, Any]] = []
    if len(inserted) < len(planned):
        new = {r["idempotency_key"] for r in inserted}
        others = [p.idempotency_key for p in planned if p.idempotency_key not in new]
        for row in await runs_repo.existing_jobs(pool, others):
            if row["state"] in TERMINAL:
                blocked.append(
                    {
                        "account_id": row["account_id"],
                        "period_start": row["period_start"],
                        "job_id": row["id"],
                        "reason": blocked_reason(row["id"], row["state"], row["last_error"]),
                    }
                )
    if blocked or future:
        await runs_repo.record_blocked(pool, summary.run_id, blocked, future)
        summary.blocked.extend(
            {**b, "period_start": b["period_start"].isoformat()} for b in blocked
        )
    return inserted


async def schedule(settings: Settings, at: dt.datetime) -> Summary:
    """Store a run for ``at``; the first distribute invoked at or after it performs it."""
    pool = await create_pool(settings, min_size=1, max_size=1)
    try:
        run_id = await runs_repo.schedule_run(pool, at)
    finally:
        await pool.close()
    return Summary(run_id=run_id, as_of=at.isoformat(), state="scheduled")


async def reconcile_once(settings: Settings) -> ReconcileSummary | None:
    """``billq reconcile``: the repair step alone, under the distributor's lock.

    Returns None when another distributor or reconciler holds the lock.
    """
    lock_conn = await connect(settings)
    try:
        if not await runs_repo.try_lock(lock_conn):
            return None
        pool = await create_pool(settings, min_size=1, max_size=2)
        conn = await connect_any(settings.amqp_urls)
        gateway = make_gateway(settings)
        try:
            channel = await conn.channel()
            await topology.declare(channel, settings)
            await channel.close()
            outbox = Outbox(pool, Publisher(conn, timeout=settings.publish_timeout), settings)
            return await reconcile(settings, pool, conn, outbox, gateway)
        finally:
            await gateway.aclose()
            await conn.close()
            await pool.close()
    finally:
        await lock_conn.close()
