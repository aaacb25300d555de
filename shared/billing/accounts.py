"""An account as integrators load it: validation of one input row (pure).

Every problem names its column (``InvalidField``); the caller adds the line. Values arrive as
CSV text or JSON scalars; lists, objects and booleans are refused rather than stored as their
Python repr.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

from shared.billing.money import check_amount, check_currency, minor_units
from shared.billing.periods import (
    INTERVALS,
    Interval,
    anchored_date,
    first_billing_at,
    parse_as_of,
)
from shared.errors import InvalidField

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
OPTIONAL = ("next_billing_at", "status", "gateway_customer")
COLUMNS = REQUIRED + OPTIONAL
# accounts.id is a Postgres bigint.
MAX_ID = 2**63 - 1
# Long enough for any real name or token, short enough that a runaway field is caught here.
MAX_TEXT = 1000
# next_billing_at outside these bounds is a data error, not a plan: the floor is absolute (no
# card billing predates it), the ceiling is relative to the import day.
EARLIEST_BILLING = dt.date(2000, 1, 1)
MAX_YEARS_AHEAD = 10
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
    # Whether the row named a status: only then does a re-import change an account's status.
    status_given: bool = False


def unknown_columns(names: object) -> list[str]:
    """Column names billq does not know, in their order (an import refuses them)."""
    if not isinstance(names, list | tuple | dict):
        return []
    return [str(n) for n in names if n not in COLUMNS]


def _text(row: Mapping[str, object], key: str) -> str | None:
    """The stripped text of a column, None when absent or blank.

    Raises:
        InvalidField: not a string or number, a NUL character, not encodable, too long.
    """
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        kind = {list: "a list", dict: "an object", bool: "a boolean"}.get(type(value), "a value")
        raise InvalidField(key, f"expected text, got {kind}")
    text = str(value).strip()
    if "\x00" in text:
        raise InvalidField(key, "contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidField(key, "is not valid Unicode text (a lone surrogate)") from None
    if len(text) > MAX_TEXT:
        raise InvalidField(key, f"longer than {MAX_TEXT} characters")
    return text or None


def _int(row: Mapping[str, object], key: str, low: int, high: int) -> int:
    value = row.get(key)
    if isinstance(value, float | bool):
        raise InvalidField(key, f"must be an integer, got {value!r}")
    text = _text(row, key) or ""
    if not re.fullmatch(r"[+-]?\d{1,30}", text):
        raise InvalidField(key, f"must be an integer, got {text[:40]!r}")
    number = int(text)
    if not low <= number <= high:
        raise InvalidField(key, f"must be {low}..{high}, got {number}")
    return number


def _amount(row: Mapping[str, object], currency: str) -> int:
    """amount_cents: an integer number of the currency's ISO 4217 minor units."""
    text = _text(row, "amount_cents") or ""
    if re.fullmatch(r"[+-]?\d*\.\d*", text) or isinstance(row.get("amount_cents"), float):
        places = minor_units(currency)
        example = {0: "500 JPY is 500", 2: "12.50 USD is 1250", 3: "1.250 KWD is 1250"}[places]
        raise InvalidField(
            "amount_cents",
            f"must be a whole number of {currency}'s minor unit ({currency} has {places} "
            f"decimals: {example}), got {text[:40]!r}",
        )
    try:
        return check_amount(_int(row, "amount_cents", -(2**63), 2**63))
    except InvalidField:
        raise
    except ValueError as exc:
        raise InvalidField("amount_cents", str(exc).removeprefix("amount_cents ")) from None


def _next_billing_at(
    row: Mapping[str, object], *, today: dt.date, interval: Interval, anchor: int
) -> dt.datetime:
    nba = _text(row, "next_billing_at")
    if not nba:
        return first_billing_at(today, interval, anchor)
    try:
        at = parse_as_of(nba)
    except (ValueError, OverflowError):
        raise InvalidField("next_billing_at", f"{nba[:40]!r} is not ISO 8601") from None
    latest = dt.date(today.year + MAX_YEARS_AHEAD, today.month, min(today.day, 28))
    if not EARLIEST_BILLING <= at.date() <= latest:
        raise InvalidField(
            "next_billing_at",
            f"{at.date()} is out of range ({EARLIEST_BILLING} to {latest})",
        )
    # Off the anchor, the next period would start at the anchor days later: two full-price
    # charges in a few days. The anchor clamps to a shorter month's last day.
    expected = anchored_date(at.year, at.month, anchor)
    if at.date() != expected:
        raise InvalidField(
            "next_billing_at",
            f"{at.date()} is not on billing_anchor_day {anchor} (expected {expected})",
        )
    return at


def parse_row(row: Mapping[str, object], *, today: dt.date) -> AccountRow:
    """Validate one row of an import file.

    Raises:
        InvalidField: the first problem found, naming the column.
    """
    unknown = unknown_columns(list(row))
    if unknown:
        raise InvalidField(unknown[0], f"unknown column(s) {', '.join(unknown)}")
    missing = [k for k in REQUIRED if _text(row, k) is None]
    if missing:
        raise InvalidField(missing[0], f"missing {', '.join(missing)}")
    account_id = _int(row, "id", 1, MAX_ID)
    name = _text(row, "name") or ""
    email = _text(row, "email") or ""
    if not _EMAIL.match(email):
        raise InvalidField("email", f"{email[:60]!r} is not an address")
    interval = _text(row, "billing_interval")
    if interval not in INTERVALS or interval is None:
        raise InvalidField("billing_interval", f"must be month or year, got {interval!r}")
    anchor = _int(row, "billing_anchor_day", 1, 31)
    status_text = _text(row, "status")
    status = status_text or "active"
    if status not in STATUSES:
        raise InvalidField("status", f"must be one of {', '.join(STATUSES)}, got {status!r}")
    try:
        currency = check_currency(_text(row, "currency") or "")
    except ValueError as exc:
        raise InvalidField("currency", str(exc)) from None
    amount = _amount(row, currency)
    return AccountRow(
        id=account_id,
        name=name,
        email=email,
        amount_cents=amount,
        currency=currency,
        billing_interval=interval,
        billing_anchor_day=anchor,
        next_billing_at=_next_billing_at(row, today=today, interval=interval, anchor=anchor),
        status=status,
        payment_method=_text(row, "payment_method") or "",
        gateway_customer=_text(row, "gateway_customer"),
        status_given=status_text is not None,
    )
