"""Billing periods: anchoring, month-end clamping, leap years, UTC — pure functions."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.billing.periods import (
    advance,
    anchored_date,
    first_billing_at,
    idempotency_key,
    next_period_start,
    on_anchor,
    parse_as_of,
    period_end,
    period_for,
)

pytestmark = pytest.mark.unit
D = dt.date
UTC = dt.UTC


def walk(start: dt.date, interval: str, anchor: int, n: int) -> list[dt.date]:
    out = [start]
    for _ in range(n):
        out.append(next_period_start(out[-1], interval, anchor))  # type: ignore[arg-type]
    return out


def test_anchor_31_clamps_to_month_end_and_returns_to_31() -> None:
    assert walk(D(2026, 1, 31), "month", 31, 12) == [
        D(2026, 1, 31),
        D(2026, 2, 28),
        D(2026, 3, 31),
        D(2026, 4, 30),
        D(2026, 5, 31),
        D(2026, 6, 30),
        D(2026, 7, 31),
        D(2026, 8, 31),
        D(2026, 9, 30),
        D(2026, 10, 31),
        D(2026, 11, 30),
        D(2026, 12, 31),
        D(2027, 1, 31),
    ]


def test_leap_february_gets_the_29th() -> None:
    assert walk(D(2028, 1, 31), "month", 31, 2) == [D(2028, 1, 31), D(2028, 2, 29), D(2028, 3, 31)]
    assert walk(D(2028, 1, 30), "month", 30, 2) == [D(2028, 1, 30), D(2028, 2, 29), D(2028, 3, 30)]
    assert walk(D(2027, 1, 29), "month", 29, 2) == [D(2027, 1, 29), D(2027, 2, 28), D(2027, 3, 29)]


def test_annual_feb_29_bills_feb_28_in_common_years() -> None:
    assert walk(D(2028, 2, 29), "year", 29, 5) == [
        D(2028, 2, 29),
        D(2029, 2, 28),
        D(2030, 2, 28),
        D(2031, 2, 28),
        D(2032, 2, 29),
        D(2033, 2, 28),
    ]


def test_december_rolls_into_january() -> None:
    assert next_period_start(D(2026, 12, 15), "month", 15) == D(2027, 1, 15)


def test_the_period_is_the_utc_date_of_next_billing_at() -> None:
    # 01:00 at +05:00 on Mar 1 is Feb 28, 20:00 UTC.
    ts = dt.datetime(2026, 3, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    period = period_for(ts, "month", 28)
    assert (period.start, period.end) == (D(2026, 2, 28), D(2026, 3, 28))
    assert advance(ts, "month", 28) == dt.datetime(2026, 3, 28, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone"):
        period_for(dt.datetime(2026, 3, 1), "month", 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31", dt.datetime(2026, 1, 31, tzinfo=UTC)),
        ("2026-01-31T12:00:00Z", dt.datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T12:00:00+02:00", dt.datetime(2026, 1, 31, 10, tzinfo=UTC)),
        ("2026-01-31T12:00:00", dt.datetime(2026, 1, 31, 12, tzinfo=UTC)),
    ],
)
def test_as_of_takes_iso_8601(text: str, expected: dt.datetime) -> None:
    assert parse_as_of(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "2026-02-30", "31/01/2026"])
def test_a_bad_as_of_is_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_as_of(text)


def test_bad_interval_or_anchor_is_refused() -> None:
    with pytest.raises(ValueError, match="billing_interval"):
        next_period_start(D(2026, 1, 1), "week", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="billing_anchor_day"):
        next_period_start(D(2026, 1, 1), "month", 32)


def test_idempotency_keys() -> None:
    assert idempotency_key(42, D(2026, 3, 1)) == "billq_42_2026-03-01"
    assert idempotency_key(42, D(2026, 3, 1), 2) == "billq_42_2026-03-01_d2"


def test_first_billing_at_is_the_next_anchored_day() -> None:
    assert first_billing_at(D(2026, 2, 10), "month", 31) == dt.datetime(2026, 2, 28, tzinfo=UTC)
    assert first_billing_at(D(2026, 2, 10), "month", 5) == dt.datetime(2026, 3, 5, tzinfo=UTC)


anchors = st.integers(1, 31)
starts = st.dates(D(1990, 1, 1), D(2200, 12, 1))


@given(starts, anchors)
def test_monthly_periods_land_on_the_clamped_anchor_and_last_28_to_31_days(
    start: dt.date, anchor: int
) -> None:
    first = anchored_date(start.year, start.month, anchor)
    nxt = next_period_start(first, "month", anchor)
    assert 28 <= (nxt - first).days <= 31
    assert nxt.day == min(anchor, (anchored_date(nxt.year, nxt.month, 31)).day)


@given(starts, anchors)
def test_twelve_monthly_periods_make_a_year(start: dt.date, anchor: int) -> None:
    first = anchored_date(start.year, start.month, anchor)
    last = walk(first, "month", anchor, 12)[-1]
    assert (last.year, last.month) == (first.year + 1, first.month)
    assert next_period_start(first, "year", anchor) == last


@given(starts, anchors)
def test_annual_periods_last_365_or_366_days(start: dt.date, anchor: int) -> None:
    first = anchored_date(start.year, start.month, anchor)
    days = (next_period_start(first, "year", anchor) - first).days
    assert days in (365, 366) or (anchor > 28 and first.month == 2 and 364 <= days <= 367)


@pytest.mark.parametrize(
    ("start", "interval", "anchor", "end"),
    [
        (D(2026, 2, 1), "month", 15, D(2026, 3, 15)),  # anchor 1 → 15: six weeks, one price
        (D(2026, 2, 28), "month", 1, D(2026, 4, 1)),  # anchor 28 → 1: never a one-day period
        (D(2026, 2, 10), "month", 5, D(2026, 4, 5)),
        (D(2026, 1, 31), "month", 31, D(2026, 2, 28)),  # on the anchor: a regular period
        (D(2026, 2, 10), "year", 1, D(2027, 3, 1)),
        (D(2026, 2, 1), "year", 1, D(2027, 2, 1)),  # month → year on the same anchor
    ],
)
def test_a_period_after_an_anchor_change_starts_where_the_paid_one_ended_and_is_never_short(
    start: dt.date, interval: str, anchor: int, end: dt.date
) -> None:
    assert period_end(start, interval, anchor) == end  # type: ignore[arg-type]


@given(starts, st.sampled_from(["month", "year"]), anchors)
def test_every_period_lasts_at_least_one_interval_and_ends_on_the_anchor(
    start: dt.date, interval: str, anchor: int
) -> None:
    end = period_end(start, interval, anchor)  # type: ignore[arg-type]
    assert on_anchor(end, anchor)
    # Feb 29 anchors clamp to Feb 28 in common years: a year of 364 to 367 days.
    shortest = 28 if interval == "month" else 364
    longest = 31 if interval == "month" else 367
    if on_anchor(start, anchor):
        assert end == next_period_start(start, interval, anchor)  # type: ignore[arg-type]
    else:
        shortest, longest = shortest - 3, longest + 31
    assert shortest <= (end - start).days <= longest


@given(st.integers(1, 10**12), starts, st.integers(0, 5), st.integers(1, 10**12), starts)
def test_keys_are_stable_and_distinct(a: int, d: dt.date, n: int, b: int, e: dt.date) -> None:
    assert idempotency_key(a, d, n) == idempotency_key(a, d, n)
    if (a, d) != (b, e):
        assert idempotency_key(a, d, n) != idempotency_key(b, e, n)
    assert idempotency_key(a, d, n) != idempotency_key(a, d, n + 1)


@given(
    st.integers(min_value=1, max_value=2**63 - 1),
    st.dates(min_value=dt.date(1000, 1, 1)),
    st.integers(min_value=0, max_value=9),
)
def test_idempotency_keys_are_the_iso_date_of_the_period(
    account_id: int, day: dt.date, attempt: int
) -> None:
    key = idempotency_key(account_id, day, attempt)
    assert key.startswith(f"billq_{account_id}_{day:%Y-%m-%d}")
    assert key == idempotency_key(account_id, dt.datetime.combine(day, dt.time()), attempt)
