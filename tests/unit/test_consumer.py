"""The consumer without a broker: exactly one broker action per outcome.

The consumer's batch step (``_process``, what each delivered batch runs) is driven with fake
deliveries, a scripted handler, a recording publisher and a fake channel for the ack frontier.
The reconnect loop needs a broker: ``tests/integration/test_worker_log_events.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared.amqp.publisher import Publisher
from shared.config import load_settings
from shared.errors import PublishFailed
from shared.messages import HANDOFF_HEADER
from worker.acks import AckFrontier
from worker.consumer import Consumer
from worker.handler import Delivery, Handler
from worker.outcome import Ack, Dead, Outcome, Retry
from worker.stats import Stats

pytestmark = pytest.mark.unit

SETTINGS = load_settings(queue_prefix="p", retry_delays=[1, 5])


@dataclass
class FakeMessage:
    delivery_tag: int
    body: bytes = b'{"job_id": 1}'
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    message_id: str | None = "m"
    type: str | None = "charge"
    content_type: str | None = "application/json"
    nacked: list[bool] = field(default_factory=list)

    async def nack(self, requeue: bool = True) -> None:
        self.nacked.append(requeue)


class ScriptedHandler:
    def __init__(self, outcomes: Sequence[Outcome] | Exception) -> None:
        self._outcomes = outcomes
        self.seen: list[Delivery] = []

    async def handle_batch(self, batch: Sequence[Delivery]) -> list[Outcome]:
        self.seen += batch
        if isinstance(self._outcomes, Exception):
            raise self._outcomes
        return list(self._outcomes)


@dataclass
class Published:
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    expiration_s: float | None


class RecordingPublisher:
    def __init__(self, *, fail: bool = False) -> None:
        self.published: list[Published] = []
        self._fail = fail

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: dict[str, Any],
        expiration_s: float | None = None,
        **_: object,
    ) -> None:
        if self._fail:
            raise PublishFailed("no confirm within 30s, 3 channel(s)")
        self.published.append(Published(exchange, routing_key, headers, expiration_s))


class AckChannel:
    def __init__(self) -> None:
        self.acks: list[int] = []

    async def get_underlay_channel(self) -> AckChannel:
        return self

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        assert multiple
        self.acks.append(tag)


@dataclass
class Rig:
    consumer: Consumer
    handler: ScriptedHandler
    publisher: RecordingPublisher
    channel: AckChannel
    frontier: AckFrontier
    stats: Stats

    async def process(self, messages: list[FakeMessage], *, delivered: bool = False) -> None:
        """Run one batch; ``delivered`` when its tags were already handed to the frontier."""
        for m in messages if not delivered else []:
            self.frontier.delivered(m.delivery_tag)
        batch = cast(list[AbstractIncomingMessage], messages)
        await self.consumer._process(batch, self.frontier)


def rig(outcomes: Sequence[Outcome] | Exception, *, publish_fails: bool = False) -> Rig:
    handler, publisher, channel, stats = (
        ScriptedHandler(outcomes),
        RecordingPublisher(fail=publish_fails),
        AckChannel(),
        Stats(),
    )
    consumer = Consumer(SETTINGS, cast(Handler, handler), stats)
    consumer._publisher = cast(Publisher, publisher)  # what a live connection would open
    frontier = AckFrontier(cast(AbstractChannel, channel))
    return Rig(consumer, handler, publisher, channel, frontier, stats)


async def test_each_outcome_gets_one_broker_action_and_the_batch_one_ack() -> None:
    r = rig([Ack("succeeded"), Retry(4.0, 3, "gateway answered 500"), Dead("UnknownJob", "gone")])
    messages = [FakeMessage(1), FakeMessage(2, headers={HANDOFF_HEADER: 1}), FakeMessage(3)]

    await r.process(messages)

    retry, dead = r.publisher.published
    assert (retry.exchange, retry.routing_key) == ("", "p.charge.retry.5s")  # the tier above 4 s
    assert retry.headers[HANDOFF_HEADER] == 3  # the new hand-off token replaces the old one
    assert retry.headers["x-billq-last-error"] == "gateway answered 500"
    assert retry.expiration_s is not None and 4.0 <= retry.expiration_s <= 5.0
    assert (dead.exchange, dead.routing_key) == ("p.dlx", "charge")
    assert dead.headers["x-billq-error-class"] == "UnknownJob"
    assert dead.headers["x-billq-error"] == "gone"
    assert r.channel.acks == [3]  # one multiple ack once every copy was confirmed
    assert all(m.nacked == [] for m in messages)
    assert (r.stats.handled, r.stats.in_flight) == (3, 0)
    assert r.stats.outcomes == {"succeeded": 1, "retried": 1, "dead": 1}


async def test_the_handler_sees_each_delivery_as_it_came() -> None:
    r = rig([Ack("duplicate")])

    await r.process([FakeMessage(1, body=b"{}", headers={"x": 1}, redelivered=True)])

    assert r.handler.seen == [Delivery(b"{}", {"x": 1}, True)]


async def test_an_unconfirmed_copy_keeps_its_original_which_is_requeued_not_acked() -> None:
    r = rig([Ack("succeeded"), Retry(1.0, 2, "timeout"), Ack("declined")], publish_fails=True)
    messages = [FakeMessage(1), FakeMessage(2), FakeMessage(3)]

    with structlog.testing.capture_logs() as logs:
        await r.process(messages)

    assert [m.nacked for m in messages] == [[], [True], []]
    assert r.channel.acks == [3]  # 2 was settled by its requeue: the ack passes over it
    assert [e["event"] for e in logs] == ["outcome.publish_failed"]


async def test_a_handler_that_raises_gives_every_delivery_back() -> None:
    r = rig(RuntimeError("a bug"))
    messages = [FakeMessage(1), FakeMessage(2)]

    with structlog.testing.capture_logs() as logs:
        await r.process(messages)

    assert [m.nacked for m in messages] == [[True], [True]]
    assert r.channel.acks == []
    assert r.frontier.waiting == 0
    [failed] = logs
    assert (failed["event"], failed["log_level"]) == ("batch.failed", "error")
    assert failed["error"] == "RuntimeError: a bug"
    assert (r.stats.handled, r.stats.in_flight) == (2, 0)


async def test_batches_finishing_out_of_order_ack_only_the_finished_prefix() -> None:
    r = rig([Ack("succeeded")])
    first, second = FakeMessage(1), FakeMessage(2)
    r.frontier.delivered(1)

    await r.process([second])  # delivered after 1, finished before it
    assert r.channel.acks == []
    await r.process([first], delivered=True)

    assert r.channel.acks == [2]
