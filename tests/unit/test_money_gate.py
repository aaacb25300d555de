"""The pure parts of money safety: the gate, catch-up pacing, blocked reasons, the audit."""

from __future__ import annotations

import datetime as dt

import pytest

from distributor.plan import blocked_reason, paced
from shared.billing.audit import Recorded, Taken, compare
from shared.billing.claims import ClaimedJob
from shared.gateway.port import charge_metadata

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)


def job(**facts: object) -> ClaimedJob:
    base: dict[str, object] = {
        "job_id": 1,
        "account_id": 7,
        "period_start": dt.date(2026, 11, 1),
        "period_end": dt.date(2026, 12, 1),
        "idempotency_key": "billq_7_2026-11-01",
        "amount_cents": 900,
        "currency": "USD",
        "attempts": 1,
        "account_status": "active",
        "payment_method": "pm_card_visa",
        "gateway_customer": None,
    }
    return ClaimedJob(**{**base, **facts})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("facts", "verdict"),
    [
        ({}, None),
        ({"account_status": "past_due"}, None),
        ({"account_status": None}, "account_missing"),
        ({"paid_by": "pi_1"}, "already_paid"),
        ({"paid_by": "pi_1", "account_status": "cancelled"}, "already_paid"),
        ({"account_status": "cancelled"}, "not_billable"),
        ({"account_status": "suspended"}, "not_billable"),
        ({"cancelled_before": True}, "not_billable"),
        ({"busy_with": 9}, "period_busy"),
        ({"overlaps_paid": "pi_1"}, "overlaps_paid"),
        ({"overlaps_paid": "pi_1", "account_status": "cancelled"}, "overlaps_paid"),
        ({"overlaps_paid": "pi_1", "busy_with": 9}, "overlaps_paid"),
    ],
)
def test_the_gate_lets_money_move_only_for_an_unpaid_billable_idle_period(
    facts: dict[str, object], verdict: str | None
) -> None:
    assert job(**facts).gate() == verdict


def test_only_a_job_claimed_before_may_have_called_the_gateway() -> None:
    assert not job(attempts=1).may_have_called_gateway
    assert job(attempts=2).may_have_called_gateway


def test_charge_metadata_is_derived_from_the_period_and_attempt_never_from_row_ids() -> None:
    meta = charge_metadata(dt.date(2026, 11, 1), 2)
    assert meta == {"billq_period": "2026-11-01", "billq_attempt": "2"}


def test_catch_up_pacing_holds_a_new_period_within_the_gap_but_never_the_same_period() -> None:
    last = (dt.date(2026, 9, 1), NOW - dt.timedelta(hours=2))
    day = 86400.0
    assert paced(dt.date(2026, 10, 1), *last, NOW, day)
    assert not paced(dt.date(2026, 9, 1), *last, NOW, day)  # the same period: a redelivery
    assert not paced(dt.date(2026, 10, 1), *last, NOW, 3600.0)  # the gap has passed
    assert not paced(dt.date(2026, 10, 1), None, None, NOW, day)  # never billed
    assert not paced(dt.date(2026, 10, 1), *last, NOW, 0.0)  # pacing off


def test_a_blocked_reason_says_what_to_do() -> None:
    assert "billq jobs retry 5" in blocked_reason(5, "dead", "account 1 is cancelled")
    assert "audit" in blocked_reason(5, "already_paid", None)


def test_the_audit_names_every_disagreement_per_period() -> None:
    taken = [
        Taken("pi_a", 1, "2026-11-01", "billq_1_2026-11-01", 900, "USD"),
        Taken("pi_b", 2, "2026-11-01", "billq_2_2026-11-01", 900, "USD"),
        Taken("pi_c", 2, "2026-11-01", "other", 900, "USD"),
    ]
    recorded = [
        Recorded("pi_b", 2, "2026-11-01", "billq_2_2026-11-01", 20),
        Recorded("pi_z", 3, "2026-11-01", "billq_3_2026-11-01", 30),
    ]
    found = compare(taken, recorded)
    assert found.checked == 3
    assert [x["charge_id"] for x in found.taken_not_recorded] == ["pi_a"]
    assert [x["charge_ids"] for x in found.double_taken] == [["pi_b", "pi_c"]]
    assert [x["charge_id"] for x in found.recorded_not_taken] == ["pi_z"]
    assert not found.clean
    assert compare(taken[:1], [Recorded("pi_a", 1, "2026-11-01", "k", 1)]).clean
