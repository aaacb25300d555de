"""An account as integrators load it: validation of one input row (pure)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from shared.billing.money import check_amount, check_currency
from shared.billing.periods import INTERVALS, Interval, first_billing_at, parse_as_of

STATUSES = ("active", "past_due", "suspended", "cancelled")
REQUIRED = (
    "id",
    "name",
    "email",
    "amount_cents",
    "currency",
    "billing_interval",
    "billing_anchor_day",
    "payment_method",
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: int
    name: str
    email: str
    amount_cents: int
    currency: str
    billing_interval: Interval
    billing_anchor_day: int
    next_billing_at: dt.datetime
    status: str
    payment_method: str
    gateway_customer: str | None


def _int(row: Mapping[str, object], key: str) -> int:
    value = row[key]
    if isinstance(value, bool):
        raise ValueError(f"{key} must be an integer")
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {value!r}") from None


def _text(row: Mapping[str, object], key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def parse_row(row: Mapping[str, object], *, today: dt.date) -> AccountRow:
    """Validate one row of an import file.

    Raises:
        ValueError: the first problem found, naming the column.
    """
    missing = [k for k in REQUIRED if _text(row, k) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    account_id = _int(row, "id")
    if account_id <= 0:
        raise ValueError(f"id must be positive, got {account_id}")
    email = cast(str, _text(row, "email"))
    if not _EMAIL.match(email):
        raise ValueError(f"email {email!r} is not an address")
    interval = _text(row, "billing_interval")
    if interval not in INTERVALS or interval is None:
        raise ValueError(f"billing_interval must be month or year, got {interval!r}")
    anchor = _int(row, "billing_anchor_day")
    if not 1 <= anchor <= 31:
        raise ValueError(f"billing_anchor_day must be 1..31, got {anchor}")
    status = _text(row, "status") or "active"
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    nba = _text(row, "next_billing_at")
    try:
        next_billing_at = parse_as_of(nba) if nba else first_billing_at(today, interval, anchor)
    except ValueError:
        raise ValueError(f"next_billing_at {nba!r} is not ISO 8601") from None
    return AccountRow(
        id=account_id,
        name=cast(str, _text(row, "name")),
        email=email,
        amount_cents=check_amount(_int(row, "amount_cents")),
        currency=check_currency(cast(str, _text(row, "currency"))),
        billing_interval=interval,
        billing_anchor_day=anchor,
        next_billing_at=next_billing_at,
        status=status,
        payment_method=cast(str, _text(row, "payment_method")),
        gateway_customer=_text(row, "gateway_customer"),
    )
