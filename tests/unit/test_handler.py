"""The handler without services: the in-memory ``JobsRepo`` and the in-process gateway.

Every path from a delivery to its ``Outcome`` — charged, declined, duplicate, busy, gated,
dead, and the retry tiers a failing gateway climbs — with what the jobs and the gateway hold
afterwards. The fake keeps the Postgres repository's rules (``test_jobs_repo_contract.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from jobskit import FakeCharge, FakeJobsRepo

from shared import signing
from shared.config import Settings, load_settings
from shared.errors import BillqError, DatabaseUnavailable, GatewayUnavailable, OutcomeUnknown
from shared.gateway.inprocess import InProcessGateway
from shared.gateway.port import ChargeOutcome, ChargeRequest
from shared.messages import HANDOFF_HEADER, encode_charge
from worker.handler import Delivery, Handler
from worker.outcome import Ack, Dead, Outcome, Retry

pytestmark = pytest.mark.unit

MARCH = dt.date(2026, 3, 1)
SETTINGS = load_settings(retry_delays=[1, 5, 30], max_attempts=3)
Events = list[MutableMapping[str, Any]]


class FlakyGateway(InProcessGateway):
    """The in-process gateway, failing the next charges as scripted.

    An ``OutcomeUnknown`` is raised after the charge ran (a timeout once the gateway stored
    it); any other error before.
    """

    def __init__(self, *failures: BillqError) -> None:
        super().__init__()
        self.failures = list(failures)
        self.calls = 0

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        self.calls += 1
        if self.failures:
            error = self.failures.pop(0)
            if isinstance(error, OutcomeUnknown):
                await super().charge(request)
            raise error
        return await super().charge(request)


def delivery(
    job_id: int,
    account_id: int = 1,
    *,
    dunning: int = 0,
    handoff: int | None = None,
    redelivered: bool = False,
    body: bytes | None = None,
) -> Delivery:
    key = f"billq_{account_id}_{MARCH.isoformat()}" + (f"_d{dunning}" if dunning else "")
    headers = {} if handoff is None else {HANDOFF_HEADER: handoff}
    return Delivery(body or encode_charge(job_id, account_id, MARCH, key, 1), headers, redelivered)


@pytest.fixture
def repo() -> FakeJobsRepo:
    jobs = FakeJobsRepo(worker_id="w1", live_workers={"w1", "w2"})
    jobs.add_account(1)
    jobs.add_job(10, 1)
    return jobs


@pytest.fixture
def gateway() -> FlakyGateway:
    return FlakyGateway()


@pytest.fixture
def logs() -> Iterator[Events]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def handler(
    repo: FakeJobsRepo, gateway: InProcessGateway, settings: Settings = SETTINGS
) -> Handler:
    return Handler(settings, repo, gateway)


def events(logs: Events, name: str) -> Events:
    return [e for e in logs if e["event"] == name]


async def handle(h: Handler, *deliveries: Delivery) -> list[Outcome]:
    return await h.handle_batch(list(deliveries))


# -- charging ------------------------------------------------------------------------------


async def test_a_due_job_is_charged_once_and_recorded(
    repo: FakeJobsRepo, gateway: FlakyGateway
) -> None:
    assert await handle(handler(repo, gateway), delivery(10)) == [Ack("succeeded")]

    [charge] = gateway.charges
    assert (charge.idempotency_key, charge.amount_cents, charge.currency) == (
        "billq_1_2026-03-01",
        1999,
        "usd",
    )
    assert charge.metadata == {"billq_period": "2026-03-01", "billq_attempt": "0"}
    assert repo.jobs[10].state == "succeeded"
    assert repo.charges[(1, MARCH)].charge_id == charge.charge_id


async def test_a_batch_keeps_one_outcome_per_message_in_order(
    repo: FakeJobsRepo, gateway: FlakyGateway, logs: Events
) -> None:
    repo.add_account(2).payment_method = "pm_card_chargeDeclinedInsufficientFunds"
    repo.add_job(11, 2)

    outcomes = await handle(
        handler(repo, gateway),
        delivery(10),
        delivery(0, body=b"not json"),
        delivery(99),
        delivery(11, 2),
    )

    assert [type(o) for o in outcomes] == [Ack, Dead, Dead, Ack]
    assert outcomes[0] == Ack("succeeded") and outcomes[3] == Ack("declined")
    assert isinstance(outcomes[1], Dead) and outcomes[1].error_class == "InvalidMessage"
    assert outcomes[2] == Dead("UnknownJob", "job 99 does not exist")
    assert (repo.jobs[11].state, repo.jobs[11].decline_code) == ("failed", "insufficient_funds")
    assert repo.accounts[2].status == "past_due"
    [batch] = events(logs, "batch.handled")
    assert batch["outcomes"] == {"ack": 2, "dead": 2}
    [declined] = events(logs, "job.declined")
    assert (declined["job_id"], declined["decline_code"]) == (11, "insufficient_funds")


# -- messages that claim nothing -----------------------------------------------------------


async def test_a_copy_of_a_finished_job_is_acked_as_a_duplicate_without_a_call(
    repo: FakeJobsRepo, gateway: FlakyGateway
) -> None:
    repo.jobs[10].state = "succeeded"

    assert await handle(handler(repo, gateway), delivery(10)) == [Ack("duplicate")]
    assert gateway.calls == 0


async def test_a_job_held_by_a_live_worker_is_tried_again_later(
    repo: FakeJobsRepo, gateway: FlakyGateway
) -> None:
    job = repo.jobs[10]
    job.state, job.attempts, job.locked_by = "processing", 1, "w2"
    job.locked_until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)

    assert await handle(handler(repo, gateway), delivery(10)) == [
        Retry(1.0, None, "job busy elsewhere")
    ]
    assert gateway.calls == 0


async def test_a_message_that_does_not_match_its_job_is_dead_and_the_job_untouched(
    repo: FakeJobsRepo, gateway: FlakyGateway
) -> None:
    forged = encode_charge(10, 1, MARCH, "billq_1_forged", 1)

    [outcome] = await handle(handler(repo, gateway), delivery(10, body=forged))

    assert outcome == Dead("InvalidMessage", "message does not match job 10")
    assert (repo.jobs[10].state, repo.jobs[10].attempts) == ("published", 0)


async def test_an_unsigned_message_is_dead_when_messages_must_be_signed(
    repo: FakeJobsRepo, gateway: FlakyGateway
) -> None:
    signed = SETTINGS.model_copy(
        update={"signing_keys": load_settings(signing_keys="k1").signing_keys}
    )
    body = delivery(10).body

    unsigned, good = await handle(
        handler(repo, gateway, signed),
        delivery(10),
        Delivery(body, {signing.SIGNATURE_HEADER: signing.sign(body, b"k1")}, False),
    )

    assert isinstance(unsigned, Dead) and unsigned.error_class == "BadSignature"
    assert good == Ack("succeeded")


# -- the gate ------------------------------------------------------------------------------


async def test_a_period_already_paid_ends_its_job_without_charging(
    repo: FakeJobsRepo, gateway: FlakyGateway
) -> None:
    repo.charges[(1, MARCH)] = FakeCharge(10, "billq_1_2026-03-01", "pi_paid")
    repo.jobs[10].state = "succeeded"
    repo.add_job(11, 1, dunning_attempt=1)

    assert await handle(handler(repo, gateway), delivery(11, dunning=1)) == [Ack("already_paid")]
    assert gateway.calls == 0
    assert repo.jobs[11].state == "already_paid"


async def test_a_cancelled_account_is_dead_without_a_charge(
    repo: FakeJobsRepo, gateway: FlakyGateway, logs: Events
) -> None:
    repo.accounts[1].status = "cancelled"

    [outcome] = await handle(handler(repo, gateway), delivery(10))

    assert isinstance(outcome, Dead) and outcome.error_class == "AccountNotBillable"
    assert gateway.calls == 0
    assert repo.jobs[10].state == "dead"
    [dead] = events(logs, "job.dead")
    assert (dead["job_id"], dead["error_class"], dead["log_level"]) == (
        10,
        "AccountNotBillable",
        "warning",
    )


async def test_a_period_another_job_is_charging_waits_for_it(
    repo: FakeJobsRepo, gateway: FlakyGateway
) -> None:
    job = repo.jobs[10]
    job.state, job.attempts, job.locked_by = "processing", 1, "w2"
    job.locked_until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    repo.add_job(11, 1, dunning_attempt=1)

    [outcome] = await handle(handler(repo, gateway), delivery(11, dunning=1))

    assert isinstance(outcome, Retry) and outcome.handoff == 1
    assert gateway.calls == 0
    assert repo.jobs[11].state == "retrying"


# -- failures and the retry tiers ----------------------------------------------------------


async def test_a_failed_claim_retries_every_message_with_the_hand_off_it_carried(
    repo: FakeJobsRepo, gateway: FlakyGateway, logs: Events
) -> None:
    repo.fail["claim_many"] = DatabaseUnavailable("database unavailable (ConnectionResetError)")

    outcomes = await handle(handler(repo, gateway), delivery(10, handoff=4), delivery(10))

    assert [(o.delay_s, o.handoff) for o in outcomes if isinstance(o, Retry)] == [
        (1.0, 4),
        (1.0, None),
    ]
    assert gateway.calls == 0
    [failed] = events(logs, "batch.claim_failed")
    assert failed["size"] == 2


async def test_a_failed_commit_is_retried_and_the_retry_records_the_same_charge(
    repo: FakeJobsRepo, gateway: FlakyGateway
) -> None:
    repo.fail["record_successes"] = DatabaseUnavailable("database unavailable (timeout)")
    h = handler(repo, gateway)

    [first] = await handle(h, delivery(10))
    assert isinstance(first, Retry) and first.handoff == 1
    [again] = await handle(h, delivery(10, handoff=first.handoff, redelivered=True))

    assert again == Ack("succeeded")
    [charge] = gateway.charges  # the key replayed the first charge: money moved once
    assert repo.charges[(1, MARCH)].charge_id == charge.charge_id


async def test_a_failing_gateway_climbs_the_retry_tiers_then_the_job_is_dead(
    repo: FakeJobsRepo, logs: Events
) -> None:
    gateway = FlakyGateway(*(GatewayUnavailable("gateway answered 503") for _ in range(3)))
    h = handler(repo, gateway)

    first = await handle(h, delivery(10))
    second = await handle(h, delivery(10, handoff=1))
    third = await handle(h, delivery(10, handoff=2))

    assert first == [Retry(1.0, 1, "gateway answered 503")]
    assert second == [Retry(5.0, 2, "gateway answered 503")]
    assert third == [Dead("GatewayUnavailable", "gave up after 3 attempts: gateway answered 503")]
    assert [e["delay_s"] for e in events(logs, "job.retry_scheduled")] == [1.0, 5.0]
    [dead] = events(logs, "job.dead")
    assert (dead["attempt"], dead["reason"]) == (
        3,
        "gave up after 3 attempts: gateway answered 503",
    )
    assert (repo.jobs[10].state, gateway.charges) == ("dead", [])


async def test_a_timeout_on_the_last_attempt_is_resolved_with_the_gateway_not_declared_dead(
    repo: FakeJobsRepo,
) -> None:
    gateway = FlakyGateway(OutcomeUnknown("no answer from the gateway (ReadTimeout)"))
    last_try = SETTINGS.model_copy(update={"max_attempts": 1})

    assert await handle(handler(repo, gateway, last_try), delivery(10)) == [Ack("succeeded")]
    [charge] = gateway.charges
    assert repo.charges[(1, MARCH)].charge_id == charge.charge_id
    assert repo.jobs[10].state == "succeeded"
