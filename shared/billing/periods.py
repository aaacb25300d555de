"""Billing periods: monthly or annual, anchored on a day of the month, all in UTC.

The anchor, not the previous date, decides each period start, so month-end clamping
does not drift: anchor 31 gives Jan 31 → Feb 28/29 → Mar 31.

A change of anchor or interval takes effect at the end of the current period (Stripe's
billing-cycle-anchor change without proration): the next period starts exactly where the paid
one ends, so periods never overlap, and runs to the first date on the new anchor at least one
full interval later — a longer transition period for one price, never a short one charged in
full.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from typing import Literal

Interval = Literal["month", "year"]
INTERVALS: tuple[Interval, ...] = ("month", "year")


def _check(interval: str, anchor_day: int) -> None:
    if interval not in INTERVALS:
        raise ValueError(f"billing_interval must be 'month' or 'year', got {interval!r}")
    if not 1 <= anchor_day <= 31:
        raise ValueError(f"billing_anchor_day must be 1..31, got {anchor_day}")


def anchored_date(year: int, month: int, anchor_day: int) -> dt.date:
    """The anchor day in that month, clamped to the month's last day."""
    return dt.date(year, month, min(anchor_day, calendar.monthrange(year, month)[1]))


def next_period_start(period_start: dt.date, interval: Interval, anchor_day: int) -> dt.date:
    """Start of the period after the one starting at ``period_start``."""
    _check(interval, anchor_day)
    if interval == "month":
        year, month = divmod(period_start.year * 12 + period_start.month, 12)
        # divmod on (months since year 0) gives month 0..11; shift back to 1..12.
        return anchored_date(year, month + 1, anchor_day)
    return anchored_date(period_start.year + 1, period_start.month, anchor_day)


def on_anchor(start: dt.date, anchor_day: int) -> bool:
    """Whether ``start`` is the anchor day of its month (clamped)."""
    return anchored_date(start.year, start.month, anchor_day) == start


def _one_interval_later(start: dt.date, interval: Interval) -> dt.date:
    """The same day one month or year later, clamped to that month's last day."""
    if interval == "month":
        year, month = divmod(start.year * 12 + start.month, 12)
        return anchored_date(year, month + 1, start.day)
    return anchored_date(start.year + 1, start.month, start.day)


def period_end(start: dt.date, interval: Interval, anchor_day: int) -> dt.date:
    """End of the period that starts at ``start``. A start off the anchor (the anchor or the
    interval changed since the previous period was billed) begins the transition period: it
    ends on the first anchored date at least one interval later, so it is never shorter than
    a regular period and the next one is on the anchor again."""
    _check(interval, anchor_day)
    if on_anchor(start, anchor_day):
        return next_period_start(start, interval, anchor_day)
    return first_billing_at(_one_interval_later(start, interval), "month", anchor_day).date()


@dataclass(frozen=True, slots=True)
class Period:
    start: dt.date
    end: dt.date


def _utc(ts: dt.datetime) -> dt.datetime:
    if ts.tzinfo is None:
        raise ValueError("next_billing_at must be timezone-aware")
    return ts.astimezone(dt.UTC)


def period_for(next_billing_at: dt.datetime, interval: Interval, anchor_day: int) -> Period:
    """The period billed for an account whose ``next_billing_at`` is given."""
    start = _utc(next_billing_at).date()
    return Period(start, period_end(start, interval, anchor_day))


def advance(next_billing_at: dt.datetime, interval: Interval, anchor_day: int) -> dt.datetime:
    """``next_billing_at`` after the period is paid: the period's end at 00:00 UTC."""
    end = period_for(next_billing_at, interval, anchor_day).end
    return dt.datetime.combine(end, dt.time(), tzinfo=dt.UTC)


def first_billing_at(start: dt.date, interval: Interval, anchor_day: int) -> dt.datetime:
    """The first anchored date on or after ``start``, at 00:00 UTC."""
    _check(interval, anchor_day)
    candidate = anchored_date(start.year, start.month, anchor_day)
    if candidate < start:
        candidate = next_period_start(candidate, "month", anchor_day)
    return dt.datetime.combine(candidate, dt.time(), tzinfo=dt.UTC)


def idempotency_key(account_id: int, period_start: dt.date, attempt: int = 0) -> str:
    """``billq_{account}_{YYYY-MM-DD}``; dunning attempt N appends ``_dN``. Never the clock."""
    d = period_start  # formatted by hand: strftime was a visible share of the distributor
    key = f"billq_{account_id}_{d.year:04d}-{d.month:02d}-{d.day:02d}"
    return f"{key}_d{attempt}" if attempt > 0 else key


def parse_as_of(text: str) -> dt.datetime:
    """ISO 8601 instant or date; a date means 00:00 UTC, a naive time is taken as UTC.

    Raises:
        ValueError: not ISO 8601.
    """
    raw = text.strip()
    try:
        if len(raw) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(raw), dt.time(), tzinfo=dt.UTC)
        ts = dt.datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--as-of: expected ISO 8601 like 2026-01-31T12:00:00Z or 2026-01-31, got {text!r}"
        ) from None
    return ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts.astimezone(dt.UTC)
