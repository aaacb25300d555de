"""Consume both lanes' queues with per-consumer prefetch QoS; one broker action per outcome.

The consumer owns its reconnect loop: on every (re)connection it redeclares the
topology and starts consuming again, failing over across the configured brokers.
A watchdog notices "connected but not consuming" (a consumer the broker cancelled,
on either lane) and reconnects. The bulk and priority queues are consumed on a channel
each, with its own prefetch window and its own ack frontier (a delivery of one lane
waiting for a charge slot never holds back the other lane's acks); which delivery
starts next is ``worker/lanes.py``'s decision.

Longer than most: the reconnect loop, both lanes' consumers, the watchdog and the one broker
action per outcome share one connection's state; split, each part would reach into the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from functools import partial

import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from shared.amqp import dlq, names, topology
from shared.amqp.connection import connect_with_retry
from shared.amqp.publisher import Publisher
from shared.backoff import Backoff
from shared.config import Settings
from shared.errors import BillqError, ConfigError
from shared.messages import HANDOFF_HEADER
from worker.acks import AckFrontier
from worker.breaker import Breaker
from worker.handler import Delivery, Handler
from worker.lanes import admit, priority_slots
from worker.metrics import Metrics
from worker.outcome import Ack, Dead, Outcome, Retry
from worker.stats import Stats

log = structlog.get_logger("billq.worker")

# A session that consumed this long was healthy: the next reconnect starts from a short delay.
HEALTHY_SESSION_S = 30.0
# Retry copies expire in [1 - JITTER, 1] x their tier: spread without exceeding the tier.
JITTER = 0.2
PRIORITY_FIRST: tuple[names.Lane, names.Lane] = ("priority", "bulk")


class Consumer:
    def __init__(
        self,
        settings: Settings,
        handler: Handler,
        stats: Stats,
        metrics: Metrics | None = None,
        after_message: Callable[[], None] | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self._settings = settings
        # While the gateway's breaker is open nothing new is claimed: deliveries wait here
        # unacked (no attempt spent) and go back to the queue after BILLQ_BREAKER_HOLD_S.
        self._breaker = breaker
        self._held_since: float | None = None
        if breaker is not None:
            breaker.on_close(self._resume)
        self._handler = handler
        self._stats = stats
        self._metrics = metrics
        self._after_message = after_message
        # Deliveries waiting for a charge slot, per lane, and the slots each lane holds.
        self._pending: dict[names.Lane, list[AbstractIncomingMessage]] = {
            lane: [] for lane in names.LANES
        }
        self._busy: dict[names.Lane, int] = dict.fromkeys(names.LANES, 0)
        self._slots = priority_slots(settings.concurrency, settings.priority_share)
        self._lane_of_tag: dict[str, names.Lane] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._frontiers: dict[names.Lane, AckFrontier] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._publisher: Publisher | None = None
        self.connected = asyncio.Event()
        if metrics:
            # Read at scrape time: the per-delivery path pays nothing for these gauges.
            for lane in names.LANES:
                metrics.lane_in_flight.labels(lane).set_function(partial(self._busy_in, lane))
                metrics.lane_waiting.labels(lane).set_function(partial(self._waiting_in, lane))

    def _busy_in(self, lane: names.Lane) -> int:
        return self._busy[lane]

    def _waiting_in(self, lane: names.Lane) -> int:
        return len(self._pending[lane])

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then finish in-flight work within the grace period."""
        # One backoff for the whole loop: a connection that opens and dies at once (a
        # channel error, a cancelled consumer) waits longer each time instead of storming.
        backoff = Backoff()
        while not stop.is_set():
            conn = await connect_with_retry(self._settings.amqp_urls, stop=stop, backoff=backoff)
            if conn is None:
                break
            opened = time.monotonic()
            try:
                await self._consume(conn, stop)
            except ConfigError:
                raise  # a topology mismatch: reconnecting cannot help
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
                if self._metrics:
                    self._metrics.reconnects.inc()
                if time.monotonic() - opened > HEALTHY_SESSION_S:
                    backoff.reset()
                delay = backoff.next()
                log.info("broker.reconnecting", retry_s=round(delay, 3))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        await self._drain()

    async def _consume(self, conn: AbstractConnection, stop: asyncio.Event) -> None:
        setup = await conn.channel()
        await topology.declare(setup, self._settings)
        await setup.close()
        self._publisher = Publisher(conn, timeout=self._settings.publish_timeout)
        # Deliveries still waiting from an earlier channel died with it (the broker requeued
        # them); acks are per channel, so each channel gets its own frontier.
        for waiting in self._pending.values():
            waiting.clear()
        self._held_since = None
        consumers = []
        for lane in names.LANES:
            channel = await conn.channel()
            # Per-consumer QoS (global QoS closes a quorum queue's connection): each lane's
            # window is its own, so a full bulk window never holds a priority delivery back.
            await channel.set_qos(prefetch_count=self._settings.prefetch_window)
            self._frontiers[lane] = AckFrontier(channel)
            queue = await channel.get_queue(names.lane_queue(self._settings.queue_prefix, lane))
            # Our own tag, known before the first delivery: it names the delivery's lane.
            tag = f"billq-{lane}-{uuid.uuid4().hex[:12]}"
            self._lane_of_tag[tag] = lane
            await queue.consume(self._on_message, consumer_tag=tag)
            consumers.append((channel, queue, tag))
        self.connected.set()
        if self._metrics:
            self._metrics.prefetch.set(self._settings.prefetch_window)
        log.info(
            "worker.consuming",
            queues=[q.name for _, q, _ in consumers],
            prefetch=self._settings.prefetch_window,
            concurrency=self._settings.concurrency,
            priority_slots=self._slots,
        )
        while not stop.is_set():
            if conn.is_closed or any(channel.is_closed for channel, _, _ in consumers):
                return
            if not all([await self._is_consuming(ch, tag) for ch, _, tag in consumers]):
                log.warning("worker.consumer_cancelled")
                return
            if self._held_too_long():
                await self._return_held("breaker open longer than BILLQ_BREAKER_HOLD_S")
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                continue
        # Stop taking work; in-flight deliveries finish and are acked on their channels.
        for _, queue, tag in consumers:
            with contextlib.suppress(Exception):  # the channel may already be gone
                await queue.cancel(tag)
        if self._breaker is not None and not self._breaker.admits:
            await self._return_held("stopping while the gateway breaker is open")
        self._flush(force=True)
        await self._drain()

    @staticmethod
    async def _is_consuming(channel: AbstractChannel, tag: str) -> bool:
        underlay = await channel.get_underlay_channel()
        consumers: dict[str, object] = getattr(underlay, "consumers", {})
        return tag in consumers

    async def _drain(self) -> None:
        # One grace for both steps: supervisors stop waiting (and SIGKILL) after it.
        deadline = time.monotonic() + self._settings.shutdown_grace
        if self._tasks:
            log.info("worker.draining", in_flight=len(self._tasks))
            _, pending = await asyncio.wait(self._tasks, timeout=self._settings.shutdown_grace)
            if pending:
                log.warning("worker.grace_expired", abandoned=len(pending))
                for task in pending:
                    task.cancel()
        # A finished delivery may have left its ack to a frontier's own flush: let it leave.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(f.flushed() for f in self._frontiers.values())),
                timeout=max(0.0, deadline - time.monotonic()),
            )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Deliveries that arrive within BILLQ_BATCH_WAIT_MS of each other are claimed in one
        # statement; from there each moves on its own (see Handler.handle_batch). Charges
        # in flight are bounded by the prefetch window (BILLQ_CONCURRENCY), not by batches:
        # a slow charge holds its own delivery, never a batch or the window behind it.
        lane = self._lane(message)
        assert message.delivery_tag is not None
        self._frontiers[lane].delivered(message.delivery_tag)
        self._pending[lane].append(message)
        if self._breaker is not None and not self._breaker.admits:
            if self._held_since is None:
                self._held_since = time.monotonic()
            return  # held until the breaker closes (``_resume``)
        if lane == "priority" or self._waiting() >= self._settings.worker_batch_max:
            self._flush()  # a priority delivery does not wait to be batched
        else:
            self._flush_later()

    def _lane(self, message: AbstractIncomingMessage) -> names.Lane:
        return self._lane_of_tag.get(message.consumer_tag or "", "bulk")

    def _waiting(self) -> int:
        return sum(len(waiting) for waiting in self._pending.values())

    def _flush_later(self) -> None:
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                self._settings.batch_wait_ms / 1000, self._flush
            )

    def _flush(self, *, force: bool = False) -> None:
        """Claim what may start now (``force``: everything that waits, also while the
        breaker is open, at shutdown)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not force and self._breaker is not None and not self._breaker.admits:
            return
        size = self._settings.worker_batch_max
        for lane, started in self._start_waiting(force=force):
            # A batch is one lane's: its deliveries are acked on that lane's channel.
            for i in range(0, len(started), size):
                batch = started[i : i + size]
                # Our own task, not the channel's: a closing channel must not cancel a commit.
                task = asyncio.create_task(self._process(batch, self._frontiers[lane]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _start_waiting(
        self, *, force: bool
    ) -> list[tuple[names.Lane, list[AbstractIncomingMessage]]]:
        """Take the deliveries that get a charge slot now, priority lane first."""
        p, b = self._pending["priority"], self._pending["bulk"]
        if force:
            counts = (len(p), len(b))
        else:
            chosen = admit(
                capacity=self._settings.concurrency,
                slots=self._slots,
                busy_priority=self._busy["priority"],
                busy_bulk=self._busy["bulk"],
                waiting_priority=len(p),
                waiting_bulk=len(b),
            )
            counts = (chosen.priority, chosen.bulk)
        started = []
        for lane, n in zip(PRIORITY_FIRST, counts, strict=True):
            waiting = self._pending[lane]
            started.append((lane, waiting[:n]))
            self._pending[lane] = waiting[n:]
            self._busy[lane] += n
        return started

    def _resume(self) -> None:
        """The breaker closed: what it held starts now."""
        self._held_since = None
        if self._waiting() and self._frontiers:
            self._flush()

    def _held_too_long(self) -> bool:
        return (
            self._held_since is not None
            and bool(self._waiting())
            and time.monotonic() - self._held_since >= self._settings.breaker_hold_s
        )

    async def _return_held(self, why: str) -> None:
        """Give held deliveries back to the queue; nobody claimed them, so no job lost an
        attempt (the broker's delivery count grows by one: its limit is a backstop)."""
        held = {lane: waiting[:] for lane, waiting in self._pending.items()}
        for waiting in self._pending.values():
            waiting.clear()
        self._held_since = None
        if not any(held.values()) or not self._frontiers:
            return
        count = sum(len(messages) for messages in held.values())
        log.warning("worker.returning_held", deliveries=count, reason=why)
        if self._metrics:
            self._metrics.breaker_returned.inc(count)
        for lane, messages in held.items():
            for message in messages:
                await self._requeue(message)
            await self._frontiers[lane].finished((), [_tag(m) for m in messages])

    async def _process(self, batch: list[AbstractIncomingMessage], frontier: AckFrontier) -> None:
        self._stats.in_flight += len(batch)
        if self._metrics:
            self._metrics.in_flight.set(self._stats.in_flight)
        started = time.perf_counter()
        settled: set[int] = set()

        async def on_outcome(i: int, outcome: Outcome) -> None:
            settled.add(i)
            await self._settle(batch[i], outcome, frontier, started)

        try:
            await self._handler.handle_batch(
                [Delivery(m.body, m.headers or {}, bool(m.redelivered)) for m in batch],
                on_outcome,
            )
        except Exception as exc:
            # The handler never raises by design; if it does, give back every delivery it
            # had not settled rather than leave the frontier waiting for them forever.
            log.error("batch.failed", error=f"{type(exc).__name__}: {exc}", size=len(batch))
            rest = [m for i, m in enumerate(batch) if i not in settled]
            for message in rest:
                await self._requeue(message)
                self._done_one(message, started)
            await frontier.finished((), [_tag(m) for m in rest])

    async def _settle(
        self,
        message: AbstractIncomingMessage,
        outcome: Outcome,
        frontier: AckFrontier,
        started: float,
    ) -> None:
        """One broker action for one delivery's outcome, as soon as it is known."""
        label = self._stats.count(outcome)
        if self._metrics:
            self._metrics.handled.labels(label).inc()
        # A retry or dead-letter copy is confirmed before its original is acked.
        if isinstance(outcome, Ack) or await self._publish_copy(message, outcome):
            self._done_one(message, started)
            await frontier.finished([_tag(message)])
        else:
            await self._requeue(message)
            self._done_one(message, started)
            await frontier.finished((), [_tag(message)])

    def _done_one(self, message: AbstractIncomingMessage, started: float) -> None:
        lane = self._lane(message)
        self._busy[lane] = max(0, self._busy[lane] - 1)
        if self._pending["priority"]:
            self._flush()  # the freed slot: a waiting priority delivery takes it now
        elif self._pending["bulk"]:
            self._flush_later()
        self._stats.in_flight -= 1
        self._stats.handled += 1
        if self._metrics:
            self._metrics.handle_seconds.observe(time.perf_counter() - started)
            self._metrics.in_flight.set(self._stats.in_flight)
        if self._after_message:
            self._after_message()

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
        except Exception as exc:
            # Unclassified (a library's own error): the same, or the delivery would never
            # finish and would hold its channel's ack frontier for the channel's life.
            log.exception("outcome.publish_failed", error=f"{type(exc).__name__}: {exc}")
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
            # The lane's own tier: it dead-letters the copy back to the lane it came from.
            names.lane_retry_queue(self._settings.queue_prefix, self._lane(message), tier),
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
            # The lane's routing key travels with the letter: a replay returns it there.
            names.lane_routing_key(self._lane(message)),
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
