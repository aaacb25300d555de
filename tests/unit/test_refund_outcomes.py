"""A refund job whose outcome is unknown is looked up at the gateway (``find_refund``) before
it is retried or ends, so money given back is recorded, never left behind a retry or a dead
letter. The handler with the in-memory ``JobsRepo`` and the in-process gateway."""

from __future__ import annotations

import datetime as dt

import pytest
from jobskit import FakeJobsRepo

from shared.config import load_settings
from shared.errors import BillqError, GatewayUnavailable, OutcomeUnknown
from shared.gateway.inprocess import InProcessGateway
from shared.gateway.port import Charged, ChargeRequest, Refunded, RefundRequest
from shared.messages import HANDOFF_HEADER, encode_charge
from worker.handler import Delivery, Handler
from worker.outcome import Ack, Dead, Retry

pytestmark = pytest.mark.unit

MARCH = dt.date(2026, 3, 1)
SETTINGS_KW = {"retry_delays": [1, 5, 30], "max_attempts": 2}
REFUND_JOB = 20
KEY = "billq_refund_7_1"


class FlakyRefunds(InProcessGateway):
    """The in-process gateway, failing the next refunds (and lookups) as scripted. An
    ``OutcomeUnknown`` is raised after the refund ran (a timeout once the gateway stored it)."""

    def __init__(self) -> None:
        super().__init__()
        self.refund_failures: list[BillqError] = []
        self.lookup_failures: list[BillqError] = []
        self.refund_calls = self.lookups = 0

    async def refund(self, request: RefundRequest) -> Refunded:
        self.refund_calls += 1
        if self.refund_failures:
            error = self.refund_failures.pop(0)
            if isinstance(error, OutcomeUnknown):
                await super().refund(request)
            raise error
        return await super().refund(request)

    async def find_refund(self, charge_id: str, idempotency_key: str) -> Refunded | None:
        self.lookups += 1
        if self.lookup_failures:
            raise self.lookup_failures.pop(0)
        return await super().find_refund(charge_id, idempotency_key)


@pytest.fixture
def gateway() -> FlakyRefunds:
    return FlakyRefunds()


async def _world(gateway: FlakyRefunds) -> FakeJobsRepo:
    charged = await gateway.charge(
        ChargeRequest("billq_1_2026-03-01", 1, 1999, "USD", "pm_card_visa", "cus_1")
    )
    assert isinstance(charged, Charged)
    repo = FakeJobsRepo(worker_id="w1", live_workers={"w1"})
    repo.add_account(1)
    repo.add_refund_job(REFUND_JOB, 1, 7, charged.charge_id, 500)
    return repo


def _delivery(handoff: int | None = None, redelivered: bool = False) -> Delivery:
    body = encode_charge(REFUND_JOB, 1, MARCH, KEY, None, kind="refund")
    return Delivery(body, {} if handoff is None else {HANDOFF_HEADER: handoff}, redelivered)


def _handler(repo: FakeJobsRepo, gateway: InProcessGateway, **kw: object) -> Handler:
    return Handler(load_settings(**{**SETTINGS_KW, **kw}), repo, gateway)


async def test_a_refund_whose_call_timed_out_is_found_at_the_gateway_and_recorded_at_once(
    gateway: FlakyRefunds,
) -> None:
    repo = await _world(gateway)
    gateway.refund_failures = [OutcomeUnknown("no answer from the gateway (ReadTimeout)")]

    assert await _handler(repo, gateway).handle_batch([_delivery()]) == [Ack("refunded")]

    [made] = gateway.refunds
    assert repo.refunds == {REFUND_JOB: made.refund_id}
    assert repo.jobs[REFUND_JOB].state == "succeeded"
    assert (gateway.refund_calls, gateway.lookups) == (1, 1)


async def test_a_refund_that_ran_nowhere_is_retried_then_dead_once_the_gateway_says_none(
    gateway: FlakyRefunds,
) -> None:
    repo = await _world(gateway)
    gateway.refund_failures = [GatewayUnavailable("gateway answered 503") for _ in range(2)]
    h = _handler(repo, gateway)

    first = await h.handle_batch([_delivery()])
    second = await h.handle_batch([_delivery(handoff=1)])

    assert first == [Retry(1.0, 1, "gateway answered 503")]
    assert second == [Dead("GatewayUnavailable", "gave up after 2 attempts: gateway answered 503")]
    assert (repo.jobs[REFUND_JOB].state, gateway.refunds, repo.refunds) == ("dead", [], {})
    # The retry asked before it called again, and asked again before it gave up.
    assert gateway.lookups == 3


async def test_out_of_attempts_with_a_gateway_that_cannot_say_the_refund_keeps_asking(
    gateway: FlakyRefunds,
) -> None:
    repo = await _world(gateway)
    gateway.refund_failures = [OutcomeUnknown("no answer from the gateway (ReadTimeout)")]
    gateway.lookup_failures = [GatewayUnavailable("gateway listing failed")]
    h = _handler(repo, gateway, max_attempts=1)

    [outcome] = await h.handle_batch([_delivery()])

    assert isinstance(outcome, Retry) and outcome.delay_s == 30
    assert repo.jobs[REFUND_JOB].state == "retrying"  # never dead with money maybe given back
    # The copy comes back once the gateway answers: the refund it made is found, recorded once.
    assert await h.handle_batch([_delivery(handoff=1)]) == [Ack("refunded")]
    [made] = gateway.refunds
    assert repo.refunds == {REFUND_JOB: made.refund_id}
    assert gateway.refund_calls == 1  # found by the lookup, not asked for again


async def test_a_redelivered_refund_a_dead_worker_made_is_found_and_not_sent_again(
    gateway: FlakyRefunds,
) -> None:
    repo = await _world(gateway)
    job = repo.jobs[REFUND_JOB]
    made = await gateway.refund(RefundRequest(KEY, str(job.refund_charge), 500, "USD", {}))
    gateway.refund_calls = 0
    # What the dead worker left: its claim, expired.
    job.state, job.attempts, job.locked_by = "processing", 1, "w-dead"
    job.locked_until = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)

    outcomes = await _handler(repo, gateway).handle_batch([_delivery(redelivered=True)])

    assert outcomes == [Ack("refunded")]
    assert repo.refunds == {REFUND_JOB: made.refund_id}
    assert (gateway.refund_calls, gateway.lookups) == (0, 1)
