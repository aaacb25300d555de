"""Wire the worker: pool, gateway, handler, consumer, heartbeat, health; run until stopped.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT); 3 when the worker recycled itself
(memory or message limit reached, or ``billq workers restart`` — supervisor restarts it);
1 on a fatal start-up error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid

import asyncpg
import psutil
import structlog

from shared import hooks
from shared.backoff import Backoff
from shared.config import Settings
from shared.db import runs_repo, workers_repo
from shared.db.jobs_repo import PgJobsRepo
from shared.db.pool import create_pool
from shared.errors import TransientError
from shared.gateway.factory import make_gateway
from worker.breaker import Breaker, guarded
from worker.consumer import Consumer
from worker.control import ControlListener
from worker.handler import Handler
from worker.health import HealthServer
from worker.metrics import Metrics
from worker.ratelimit import RateLimitedGateway, RateLimiter
from worker.stats import Stats

log = structlog.get_logger("billq.worker")

HEARTBEAT_S = 5.0
EXIT_RECYCLE = 3


class Heartbeat:
    """Every few seconds: record liveness, settle finished runs, check the recycle limits."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        worker_id: str,
        stats: Stats,
        metrics: Metrics,
        stop: asyncio.Event,
        breaker: Breaker | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._settings = settings
        self._breaker = breaker
        self._limiter = limiter
        self._pool = pool
        self._worker_id = worker_id
        self._stats = stats
        self._metrics = metrics
        self._stop = stop
        self.recycle_reason: str | None = None
        self.db_ok = False
        self._process = psutil.Process()
        self._hooks: asyncio.Task[None] | None = None

    async def run(self) -> None:
        host, pid = socket.gethostname(), os.getpid()
        while not self._stop.is_set():
            try:
                await workers_repo.heartbeat(
                    self._pool,
                    self._worker_id,
                    host,
                    pid,
                    self._stats.in_flight,
                    self._stats.handled,
                    self._breaker.state if self._breaker else "closed",
                    self._limiter.limit if self._limiter else None,
                )
                self.db_ok = True
                self._metrics.last_heartbeat.set(time.time())
                # Runs complete by themselves: whoever heartbeats notices the last job ending.
                await runs_repo.settle_open_runs(self._pool)
                # and fold the run summaries' deltas, so the delta table stays short.
                await runs_repo.fold_summaries(self._pool)
                self._deliver_hooks()
            except TransientError as exc:
                self.db_ok = False
                log.warning("worker.heartbeat_failed", error=type(exc).__name__)
            self._check_limits()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=HEARTBEAT_S)

    def close(self) -> None:
        if self._hooks is not None:
            self._hooks.cancel()  # an unfinished attempt is retried when its lease lapses

    def _deliver_hooks(self) -> None:
        """Run hooks go out beside the heartbeat, one delivery at a time: a slow receiver
        never delays liveness."""
        if self._settings.run_webhook_url and (self._hooks is None or self._hooks.done()):
            self._hooks = asyncio.create_task(self._hooks_once())

    async def _hooks_once(self) -> None:
        try:
            await hooks.deliver_due(self._pool, self._settings)
        except TransientError as exc:
            log.warning("worker.hooks_failed", error=type(exc).__name__)

    def _check_limits(self) -> None:
        s = self._settings
        rss_mb = self._process.memory_info().rss / 1e6
        if s.max_rss_mb and rss_mb > s.max_rss_mb:
            self.recycle(f"rss {rss_mb:.0f} MB above BILLQ_MAX_RSS_MB={s.max_rss_mb:g}")
        self.check_message_limit()

    def check_message_limit(self) -> None:
        """Cheap enough to call after every message."""
        limit = self._settings.max_messages
        if limit and self._stats.handled >= limit:
            self.recycle(f"handled {self._stats.handled} messages (BILLQ_MAX_MESSAGES={limit})")

    def recycle(self, reason: str) -> None:
        if self.recycle_reason is None:
            self.recycle_reason = reason
            log.warning("worker.recycling", reason=reason)
            self._stop.set()  # stop taking work, finish in-flight, exit EXIT_RECYCLE


async def _open_pool(
    settings: Settings, worker_id: str, stop: asyncio.Event
) -> asyncpg.Pool | None:
    """A pool and a first heartbeat; while Postgres is down (a restart, a failover) keep
    trying with capped backoff instead of exiting. None when stopped first."""
    backoff = Backoff()
    while not stop.is_set():
        pool: asyncpg.Pool | None = None
        try:
            pool = await create_pool(settings, min_size=1, max_size=min(20, settings.concurrency))
            await workers_repo.heartbeat(pool, worker_id, socket.gethostname(), os.getpid(), 0, 0)
            return pool
        except TransientError as exc:
            if pool is not None:
                await pool.close()
            delay = backoff.next()
            log.warning(
                "worker.waiting_for_database", error=type(exc).__name__, retry_s=round(delay, 3)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
    return None


async def _end_waits_on_stop(settings: Settings, limiter: RateLimiter, stop: asyncio.Event) -> None:
    """Half the shutdown grace after a stop, charges still waiting out a rate limit give up
    (their jobs are retried later): handed on cleanly rather than abandoned when it ends."""
    await stop.wait()
    await asyncio.sleep(settings.shutdown_grace / 2)
    limiter.give_up_waiting()


async def run_worker(settings: Settings, stop: asyncio.Event) -> int:
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    structlog.contextvars.bind_contextvars(worker_id=worker_id)
    pool = await _open_pool(settings, worker_id, stop)
    if pool is None:
        return 0
    stats, metrics = Stats(), Metrics()
    # The rate limiter outside the breaker: a 429 is resent here, and the breaker sees each
    # one as an answer (the gateway is up), never as a failure.
    breaker = guarded(settings, make_gateway(settings), metrics)
    gateway = RateLimitedGateway(breaker, RateLimiter(settings, metrics))
    health: HealthServer | None = None
    try:
        jobs = PgJobsRepo(pool, worker_id=worker_id, lease_s=settings.job_lease)
        handler = Handler(settings, jobs, gateway, metrics.gateway_seconds.observe)
        heartbeat = Heartbeat(
            settings, pool, worker_id, stats, metrics, stop, breaker.breaker, gateway.limiter
        )
        consumer = Consumer(
            settings, handler, stats, metrics, heartbeat.check_message_limit, breaker.breaker
        )
        heartbeat.db_ok = True
        if settings.metrics_port is not None:

            def ready() -> tuple[bool, str]:
                if not consumer.connected.is_set():
                    return False, "not consuming from the broker"
                if not heartbeat.db_ok:
                    return False, "database heartbeat failing"
                return True, "consuming"

            health = HealthServer(metrics, ready)
            await health.start(settings.metrics_host, settings.metrics_port)
        beat = asyncio.create_task(heartbeat.run())
        waits = asyncio.create_task(_end_waits_on_stop(settings, gateway.limiter, stop))
        # Fleet restart: its own connection, beside the heartbeat (worker/control.py).
        listen = asyncio.create_task(ControlListener(settings, heartbeat.recycle).run(stop))
        log.info(
            "worker.started",
            concurrency=settings.concurrency,
            rate_limit_wait_s=settings.rate_limit_budget_s,
            gateway_max_rps=settings.gateway_max_rps or None,
        )
        try:
            await consumer.run(stop)
        finally:
            stop.set()  # the consumer is done (or failed): every side loop ends with it
            beat.cancel()
            listen.cancel()
            waits.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.gather(listen, return_exceptions=True), 5.0)
            heartbeat.close()
        try:
            await workers_repo.deregister(pool, worker_id)
        except Exception as exc:
            log.warning("worker.deregister_failed", error=type(exc).__name__)
        log.info(
            "worker.stopped",
            handled=stats.handled,
            outcomes=dict(stats.outcomes),
            recycled=heartbeat.recycle_reason,
        )
        return EXIT_RECYCLE if heartbeat.recycle_reason else 0
    finally:
        if health:
            await health.stop()
        await gateway.aclose()
        await pool.close()
