"""How the pages print amounts, times and durations."""

from __future__ import annotations

import datetime as dt
from typing import Any


def money(minor: int | None, currency: str) -> str:
    """An amount in ISO 4217 minor units, e.g. ``1,234.56 USD``."""
    if minor is None:
        return "-"
    from shared.billing import money as money_module

    # shared.billing.money.format_amount knows each currency's decimals (JPY 0, KWD 3)
    # once it lands; until then two decimals, as the CLI prints.
    fmt = getattr(money_module, "format_amount", None)
    if fmt is not None:
        return str(fmt(int(minor), currency.strip()))
    return f"{int(minor) / 100:,.2f} {currency.strip()}"


def when(value: Any) -> str:
    """A timestamp to the second, UTC; accepts ISO text (API shapes) or datetimes."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"
