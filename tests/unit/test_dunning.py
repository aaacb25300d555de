"""Dunning decisions, without services."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.billing.dunning import decide, severity

pytestmark = pytest.mark.unit
T0 = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("code", "decline_code", "expected"),
    [
        ("card_declined", "insufficient_funds", "soft"),
        ("processing_error", None, "soft"),
        ("card_declined", "generic_decline", "soft"),
        ("card_declined", "stolen_card", "hard"),
        ("card_declined", "lost_card", "hard"),
        ("expired_card", "expired_card", "hard"),
        ("card_declined", "invalid_account", "hard"),
    ],
)
def test_decline_codes_are_soft_or_hard(code: str, decline_code: str | None, expected: str) -> None:
    assert severity(code, decline_code) == expected


def test_a_soft_decline_is_retried_3_5_and_7_days_after_the_first_decline_then_suspended() -> None:
    steps = [
        decide(
            attempt=a, code="card_declined", decline_code="insufficient_funds", first_declined_at=T0
        )
        for a in range(4)
    ]
    assert [s.next_attempt for s in steps] == [1, 2, 3, None]
    assert [s.next_at for s in steps[:3]] == [T0 + dt.timedelta(days=d) for d in (3, 5, 7)]
    assert [s.account_status for s in steps] == ["past_due"] * 3 + ["suspended"]
    assert steps[-1].invoice_status == "uncollectible"


def test_a_hard_decline_stops_at_once() -> None:
    d = decide(attempt=0, code="card_declined", decline_code="stolen_card", first_declined_at=T0)
    assert d.next_attempt is None and d.account_status == "suspended"


@given(st.integers(0, 20), st.lists(st.floats(0.1, 30), min_size=1, max_size=6))
def test_retries_never_exceed_the_schedule(attempt: int, schedule: list[float]) -> None:
    d = decide(
        attempt=attempt,
        code="card_declined",
        decline_code=None,
        first_declined_at=T0,
        schedule_days=schedule,
    )
    assert (d.next_attempt is None) == (attempt >= len(schedule))
    if d.next_at is not None:
        assert d.next_at > T0
