"""Consume the work queue with prefetch QoS; one broker action per outcome.

The consumer owns its reconnect loop: on every (re)connection it redeclares the
topology and starts consuming again, failing over across the configured brokers.
A watchdog notices "connected but not consuming" (a consumer cancelled by the
broker) and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from shared.amqp import dlq, names, topology
from shared.amqp.connection import connect_with_retry
from shared.amqp.publisher import Publisher
from shared.config import Settings
from shared.errors import BillqError
from shared.messages import HANDOFF_HEADER
from worker.acks import AckFrontier
from worker.handler import Delivery, Handler
from worker.metrics import Metrics
from worker.outcome import Ack, Dead, Outcome, Retry
from worker.stats import Stats

log = structlog.get_logger("billq.worker")

# Retry copies expire in [1 - JITTER, 1] x their tier: spread without exceeding the tier.
JITTER = 0.2


class Consumer:
    def __init__(
        self,
        settings: Settings,
        handler: Handler,
        stats: Stats,
        metrics: Metrics | None = None,
        after_message: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._handler = handler
        self._stats = stats
        self._metrics = metrics
        self._after_message = after_message
        self._pending: list[AbstractIncomingMessage] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        # Enough batches at once to keep BILLQ_CONCURRENCY deliveries working (and at least
        # two, so one commits while the next is charged); more would only shrink them.
        self._batch_limit = max(2, -(-settings.concurrency // settings.worker_batch_max))
        self._running = 0
        self._frontier: AckFrontier | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._publisher: Publisher | None = None
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then finish in-flight work within the grace period."""
        while not stop.is_set():
            conn = await connect_with_retry(self._settings.amqp_urls, stop=stop)
            if conn is None:
                break
            try:
                await self._consume(conn, stop)
            except Exception as exc:
                # Whatever the broker connection threw (aiormq surfaces some losses as
                # StopAsyncIteration or RuntimeError): reconnect, do not die.
                log.warning("broker.connection_lost", error=type(exc).__name__)
            finally:
                self.connected.clear()
                if stop.is_set():
                    await self._drain()
                if not conn.is_closed:
                    await conn.close()
            if not stop.is_set():
                self._stats.reconnects += 1
                log.info("broker.reconnecting")
        await self._drain()

    async def _consume(self, conn: AbstractConnection, stop: asyncio.Event) -> None:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=self._settings.concurrency)
        await topology.declare(channel, self._settings)
        self._publisher = Publisher(conn, timeout=self._settings.publish_timeout)
        queue = await channel.get_queue(names.work_queue(self._settings.queue_prefix))
        # Deliveries still waiting from an earlier channel died with it (the broker requeued
        # them); acks are per channel, so each channel gets its own frontier.
        self._pending.clear()
        self._frontier = AckFrontier(channel)
        tag = await queue.consume(self._on_message)
        self.connected.set()
        if self._metrics:
            self._metrics.prefetch.set(self._settings.concurrency)
        log.info("worker.consuming", queue=queue.name, prefetch=self._settings.concurrency)
        while not stop.is_set():
            if conn.is_closed or channel.is_closed:
                return
            if not await self._is_consuming(channel, tag):
                log.warning("worker.consumer_cancelled")
                return
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                continue
        # Stop taking work; in-flight deliveries finish and are acked on this channel.
        with contextlib.suppress(Exception):  # the channel may already be gone
            await queue.cancel(tag)
        self._flush(force=True)
        await self._drain()

    @staticmethod
    async def _is_consuming(channel: AbstractChannel, tag: str) -> bool:
        underlay = await channel.get_underlay_channel()
        consumers: dict[str, object] = getattr(underlay, "consumers", {})
        return tag in consumers

    async def _drain(self) -> None:
        if not self._tasks:
            return
        log.info("worker.draining", in_flight=len(self._tasks))
        _, pending = await asyncio.wait(self._tasks, timeout=self._settings.shutdown_grace)
        if pending:
            log.warning("worker.grace_expired", abandoned=len(pending))
            for task in pending:
                task.cancel()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Deliveries are grouped so a batch shares its database round trips (group commit).
        # At most ``_batch_limit`` batches run at once; deliveries arriving meanwhile wait
        # and leave together when one finishes, so batches grow with the load instead of
        # the commit rate growing with it. An idle worker flushes after BILLQ_BATCH_WAIT_MS.
        assert self._frontier is not None and message.delivery_tag is not None
        self._frontier.delivered(message.delivery_tag)
        self._pending.append(message)
        if self._running >= self._batch_limit:
            return  # the next batch to finish flushes what waits
        if len(self._pending) >= self._settings.worker_batch_max:
            self._flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                self._settings.batch_wait_ms / 1000, self._flush
            )

    def _flush(self, *, force: bool = False) -> None:
        """Start a batch from what waits (every waiting delivery when ``force``)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        size = self._settings.worker_batch_max
        while self._pending and (force or self._running < self._batch_limit):
            batch, self._pending = self._pending[:size], self._pending[size:]
            self._running += 1
            assert self._frontier is not None
            # Our own task, not the channel's: a closing channel must not cancel a commit.
            task = asyncio.create_task(self._process(batch, self._frontier))
            self._tasks.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        if self._pending:
            self._flush()

    async def _process(self, batch: list[AbstractIncomingMessage], frontier: AckFrontier) -> None:
        self._stats.in_flight += len(batch)
        started = time.perf_counter()
        ackable: list[AbstractIncomingMessage] = []
        requeue: list[AbstractIncomingMessage] = []
        try:
            outcomes = await self._handler.handle_batch(
                [Delivery(m.body, m.headers or {}, bool(m.redelivered)) for m in batch]
            )
            for outcome in outcomes:
                self._stats.count(outcome)
            pairs = list(zip(batch, outcomes, strict=True))
            copies = [(m, o) for m, o in pairs if not isinstance(o, Ack)]
            # A retry or dead-letter copy is confirmed before its original is acked.
            confirmed = await asyncio.gather(*(self._publish_copy(m, o) for m, o in copies))
            ackable = [m for m, o in pairs if isinstance(o, Ack)]
            ackable += [m for (m, _), ok in zip(copies, confirmed, strict=True) if ok]
            requeue = [m for (m, _), ok in zip(copies, confirmed, strict=True) if not ok]
        except Exception as exc:
            # The handler never raises by design; if it does, give every delivery back
            # rather than leave the frontier waiting for them forever.
            log.error("batch.failed", error=f"{type(exc).__name__}: {exc}", size=len(batch))
            ackable, requeue = [], list(batch)
        finally:
            self._stats.in_flight -= len(batch)
            self._stats.handled += len(batch)
            if self._metrics:
                elapsed = time.perf_counter() - started
                for _ in batch:
                    self._metrics.handle_seconds.observe(elapsed)
            if self._after_message:
                self._after_message()
        for message in requeue:
            await self._requeue(message)
        await frontier.finished((_tag(m) for m in ackable), [_tag(m) for m in requeue])

    async def _publish_copy(self, message: AbstractIncomingMessage, outcome: Outcome) -> bool:
        """Publish the retry or dead-letter copy; False if it was not confirmed."""
        try:
            if isinstance(outcome, Retry):
                await self._publish_retry(message, outcome)
            elif isinstance(outcome, Dead):
                await self._publish_dead(message, outcome)
        except BillqError as exc:
            # The copy is not confirmed: keep the original; it comes back to us or a peer.
            log.warning("outcome.publish_failed", error=str(exc))
            return False
        return True

    async def _publish_retry(self, message: AbstractIncomingMessage, outcome: Retry) -> None:
        assert self._publisher is not None
        tier = topology.retry_tier_for(self._settings, outcome.delay_s)
        headers = dict(message.headers or {})
        headers.pop(HANDOFF_HEADER, None)
        if outcome.handoff is not None:
            headers[HANDOFF_HEADER] = outcome.handoff
        headers["x-billq-last-error"] = outcome.reason[:500]
        await self._publisher.publish(
            "",
            names.retry_queue(self._settings.queue_prefix, tier),
            message.body,
            message_id=message.message_id,
            message_type=message.type,
            headers=headers,
            expiration_s=tier * (1 - JITTER * random.random()),
        )

    async def _publish_dead(self, message: AbstractIncomingMessage, outcome: Dead) -> None:
        assert self._publisher is not None
        headers = dict(message.headers or {})
        headers["x-billq-error-class"] = outcome.error_class
        headers["x-billq-error"] = outcome.reason[:1000]
        headers[dlq.ID_HEADER] = dlq.new_letter_id()
        await self._publisher.publish(
            names.dead_letter_exchange(self._settings.queue_prefix),
            names.ROUTING_KEY,
            message.body,
            message_id=message.message_id,
            message_type=message.type,
            headers=headers,
            content_type=message.content_type or "application/octet-stream",
        )

    @staticmethod
    async def _requeue(message: AbstractIncomingMessage) -> None:
        try:
            await message.nack(requeue=True)
        except Exception as exc:
            # The channel is gone: the broker redelivers, and the claim sorts it out.
            log.info("nack.failed", error=type(exc).__name__, will_be_redelivered=True)


def _tag(message: AbstractIncomingMessage) -> int:
    assert message.delivery_tag is not None
    return message.delivery_tag
