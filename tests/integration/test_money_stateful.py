"""Proof beyond examples: Hypothesis interleaves every path that can move money — distribute,
worker batches, gateway faults, a worker dying after the charge, card updates, cancels,
re-imports, one-off charges and refunds (published or left to the outbox repair), a worker
dying between the gateway's refund and its commit, ``jobs retry``,
``jobs cancel``, ``dlq replay``, reconcile and audit — against the
real Postgres and RabbitMQ and the sandbox gateway, and checks after every step that no period
is charged twice, that reconcile + audit record every charge taken, and that no cancelled
period is charged (``tests/money_machine.py``).

This is the short, fixed-seed version for ``make test``; ``make chaos`` runs the long one
(``tests/chaos/test_money_stateful.py``).
"""

from __future__ import annotations

import datetime as dt

import pytest
from money_machine import START, MoneyMachine, Tally, machine_settings, run_machine

from shared.billing.periods import first_billing_at
from shared.config import Settings

pytestmark = pytest.mark.integration


def test_no_interleaving_of_operator_paths_double_charges_or_hides_money(
    settings: Settings,
) -> None:
    tally = Tally()
    run_machine(settings, tally, examples=6, steps=20, derandomize=True)
    # The invariants are asserted inside the machine; these say the run really moved money.
    assert tally.steps >= 60 and tally.periods_charged > 0, tally
    assert tally.double_charges == 0, tally
    assert tally.rules["oneoff"] > 0, tally  # one-off charges interleaved with the rest
    assert tally.rules["refund"] > 0 and tally.refunds > 0, tally  # refunds given back


def test_a_reactivation_on_a_new_anchor_while_a_period_is_open_never_bills_its_days_twice(
    settings: Settings,
) -> None:
    """The machine's steps in the order that once charged some days twice: a month's job is
    queued, the account is cancelled and re-imported active on anchor 15 (resuming on the
    15th inside that month), and one worker batch takes both jobs. The gate lets the month
    charge and ends the overlapping period without charging."""
    resume = first_billing_at(dt.datetime.now(dt.UTC).date(), "month", 15).date()
    open_month = resume.year * 12 + resume.month - (START.year * 12 + START.month)
    m = MoneyMachine(machine_settings(settings), Tally())
    try:
        m.the_first_period_is_distributed()
        for month in range(open_month):  # the months before are billed
            m.a_distributor_run(month, "up")
            m.money_is_safe()
            while m.ready:
                m.a_clean_worker_batch(5)
                m.money_is_safe()
        m.a_distributor_run(open_month, "up")  # queued, not yet worked
        m.change_an_account("reimport", 1, "pm_card_visa", 0, "cancelled", "now", (1, "month"))
        m.change_an_account("reimport", 1, "pm_card_visa", 0, "active", "now", (15, "month"))
        m.a_distributor_run(open_month + 1, "up")  # the period from the 15th, new anchor
        m.money_is_safe()
        for _ in range(3):
            while m.ready:
                m.a_clean_worker_batch(5)
                m.money_is_safe()  # no day charged twice, after every batch
            if m.held:
                m.release_every_retry()
                m.money_is_safe()
        ended = m.run(
            m.pool.fetch(
                "SELECT period_start, state, last_error FROM billing_jobs"
                " WHERE account_id = 1 ORDER BY period_start"
            )
        )
    finally:
        m.teardown()
    paid, shifted = ended[-2], ended[-1]
    assert (paid["period_start"].day, paid["state"]) == (1, "succeeded"), ended
    assert (shifted["period_start"], shifted["state"]) == (resume, "already_paid"), ended
    assert "overlaps a paid period" in shifted["last_error"]
