"""Refund jobs that stopped between two steps are carried on by the next reconcile or
distribute, against the real Postgres and RabbitMQ and the sandbox gateway (the money state
machine's plumbing, ``tests/money_machine.py``, driven step by step):

- a refund job committed and never published (its API process died between the commit and
  the publish) is published by the next ``reconcile``, or ``distribute`` — also while another
  run is open, and once a distributor that held the lock lets go;
- a refund the gateway made whose worker could not record it (no answer, and the lookup
  failed too; a worker that died after the call) is recorded by ``reconcile`` alone
  (``refunds_recovered``), once, with its credit note.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from money_machine import START, MoneyMachine, Tally, _instant, _months, machine_settings

from distributor.run import distribute, reconcile_once
from shared.config import Settings
from shared.db import runs_repo
from shared.db.jobs_repo import PgJobsRepo
from shared.db.pool import connect
from shared.errors import GatewayUnavailable, OutcomeUnknown
from shared.gateway.port import PaymentGateway, Refunded, RefundRequest
from worker.handler import Handler

pytestmark = pytest.mark.integration

GRACE_S = 0.2  # the publish timeout: how long reconcile leaves a new job to its creator


@pytest.fixture
def m(settings: Settings) -> Iterator[MoneyMachine]:
    machine = MoneyMachine(
        machine_settings(settings).model_copy(update={"publish_timeout": GRACE_S}), Tally()
    )
    try:
        machine.the_first_period_is_distributed()
        drain(machine)
        yield machine
    finally:
        machine.teardown()  # settles, then checks every invariant, refunds' R1-R4 too


def checked(m: MoneyMachine) -> None:
    m.money_is_safe()
    m.refunds_are_safe()


def drain(m: MoneyMachine) -> None:
    checked(m)
    while m.ready:
        m.a_clean_worker_batch(5)
        checked(m)


def refund_jobs(m: MoneyMachine) -> list[Any]:
    return m.run(
        m.pool.fetch(
            "SELECT j.id, j.state, j.amount_cents, r.gateway_refund_id, n.number AS note"
            " FROM billing_jobs j LEFT JOIN refunds r ON r.job_id = j.id"
            " LEFT JOIN credit_notes n ON n.refund_id = r.id"
            " WHERE j.refund_of IS NOT NULL ORDER BY j.id"
        )
    )


def unpublished_refund(m: MoneyMachine, amount: int = 300) -> int:
    m.an_application_asks_for_a_refund(0, amount, "refund-1", published=False)
    checked(m)
    [job] = refund_jobs(m)
    assert (job["state"], m.ready) == ("pending", 0)
    m.run(asyncio.sleep(GRACE_S * 2))
    return int(job["id"])


def refunded_once(m: MoneyMachine, job_id: int, amount: int = 300) -> None:
    [job] = refund_jobs(m)
    assert (job["id"], job["state"], job["amount_cents"]) == (job_id, "succeeded", amount)
    assert job["note"] is not None and job["note"].startswith("CN-")
    given = m.run(m._gateway_refunds())
    assert [(r["id"], r["amount"]) for r in given] == [(job["gateway_refund_id"], amount)]


# -- the outbox ------------------------------------------------------------------------------


def test_a_refund_job_never_published_is_published_by_the_next_reconcile(m: MoneyMachine) -> None:
    job_id = unpublished_refund(m)

    repaired = m.run(reconcile_once(m.settings))

    assert repaired is not None and repaired.republished == 1, repaired
    drain(m)
    refunded_once(m, job_id)


def test_a_refund_job_never_published_is_published_by_the_next_distribute_beside_an_open_run(
    m: MoneyMachine,
) -> None:
    # Another run is open: shard 2 of 2 of next month's tick has distributed, shard 1 not yet.
    as_of = _instant(_months(START, 1)) + dt.timedelta(hours=12)
    m.run(distribute(m.settings, as_of=as_of, shard=(1, 2)))
    drain(m)
    job_id = unpublished_refund(m)
    before = m.run(m.pool.fetchval("SELECT count(*) FROM billing_runs WHERE state = 'running'"))
    assert before >= 1

    summary = m.run(distribute(m.settings, as_of=as_of, shard=(0, 2)))  # it does the repairs

    assert summary.run_id is not None
    drain(m)
    refunded_once(m, job_id)


def test_a_reconcile_locked_out_by_a_running_distributor_leaves_the_job_for_the_next(
    m: MoneyMachine,
) -> None:
    job_id = unpublished_refund(m)
    lock = m.run(connect(m.settings))
    try:
        assert m.run(runs_repo.try_lock(lock))  # a distributor mid-run
        assert m.run(reconcile_once(m.settings)) is None
        checked(m)
        assert (refund_jobs(m)[0]["state"], m.ready) == ("pending", 0)
    finally:
        m.run(lock.close())

    repaired = m.run(reconcile_once(m.settings))

    assert repaired is not None and repaired.republished == 1
    drain(m)
    refunded_once(m, job_id)


# -- refunds the gateway made, unrecorded ---------------------------------------------------


class _Unanswered:
    """The gateway refunds, but its caller hears nothing back and cannot look it up."""

    def __init__(self, real: PaymentGateway) -> None:
        self._real = real

    async def refund(self, request: RefundRequest) -> Refunded:
        await self._real.refund(request)
        raise OutcomeUnknown("no answer from the gateway (ReadTimeout)")

    async def find_refund(self, charge_id: str, key: str) -> Refunded | None:
        raise GatewayUnavailable("gateway listing failed: 503")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _refund_with(m: MoneyMachine, gateway: Any) -> None:
    m.an_application_asks_for_a_refund(0, 300, "refund-1", published=True)
    jobs = PgJobsRepo(m.pool, worker_id="stateful-worker", lease_s=m.settings.job_lease)
    m.run(m._handle(Handler(m.settings, jobs, gateway), m.run(m._take(1))))
    checked(m)


def test_a_refund_whose_worker_heard_nothing_is_recorded_by_reconcile_alone(
    m: MoneyMachine,
) -> None:
    _refund_with(m, _Unanswered(m.gateway))
    [job] = refund_jobs(m)
    assert (job["state"], job["gateway_refund_id"], len(m.held)) == ("retrying", None, 1)

    repaired = m.run(reconcile_once(m.settings))

    assert repaired is not None and repaired.refunds_recovered == 1, repaired
    assert "refunds_recovered=1" in repaired.line()
    assert repaired.as_dict()["refunds_recovered"] == 1
    refunded_once(m, job["id"])
    m.release_every_retry()  # its retry copy comes back: a duplicate, nothing refunded again
    drain(m)
    refunded_once(m, job["id"])


def test_a_refund_whose_worker_died_after_the_call_is_recorded_by_reconcile_alone(
    m: MoneyMachine,
) -> None:
    m.an_application_asks_for_a_refund(0, 300, "refund-1", published=True)
    checked(m)
    m.a_worker_dies_after_the_gateway_answered()  # the refund is its message: priority lane
    checked(m)
    [job] = refund_jobs(m)
    assert (job["state"], job["gateway_refund_id"]) == ("processing", None)

    repaired = m.run(reconcile_once(m.settings))

    assert repaired is not None and repaired.refunds_recovered == 1, repaired
    refunded_once(m, job["id"])
    drain(m)  # the redelivered message finds it refunded
    refunded_once(m, job["id"])
