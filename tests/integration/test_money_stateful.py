"""Proof beyond examples: Hypothesis interleaves every path that can move money — distribute,
worker batches, gateway faults, a worker dying after the charge, card updates, cancels,
re-imports, one-off charges (published or left to the outbox repair), ``jobs retry``,
``jobs cancel``, ``dlq replay``, reconcile and audit — against the
real Postgres and RabbitMQ and the sandbox gateway, and checks after every step that no period
is charged twice, that reconcile + audit record every charge taken, and that no cancelled
period is charged (``tests/money_machine.py``).

This is the short, fixed-seed version for ``make test``; ``make chaos`` runs the long one
(``tests/chaos/test_money_stateful.py``).
"""

from __future__ import annotations

import pytest
from money_machine import Tally, run_machine

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
