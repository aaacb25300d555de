"""Realistic demo accounts: both intervals, varied anchors, some cards that decline."""

from __future__ import annotations

import datetime as dt
import random

import asyncpg

from shared.billing.periods import anchored_date

DECLINING_CARDS = (
    "pm_card_chargeDeclinedInsufficientFunds",
    "pm_card_chargeDeclined",
    "pm_card_chargeDeclinedExpiredCard",
)
CURRENCIES = ("USD", "USD", "USD", "EUR", "EUR", "GBP")

COPY_COLUMNS = (
    "id",
    "name",
    "email",
    "amount_cents",
    "currency",
    "billing_interval",
    "billing_anchor_day",
    "next_billing_at",
    "status",
    "payment_method",
    "gateway_customer",
)


def demo_accounts(
    n: int, *, as_of: dt.datetime, decline_rate: float = 0.05, seed: int = 7, start_id: int = 1
) -> list[tuple[object, ...]]:
    """``n`` accounts, all due at ``as_of`` (next_billing_at on or before it)."""
    rnd = random.Random(seed)
    rows: list[tuple[object, ...]] = []
    for i in range(start_id, start_id + n):
        interval = "year" if rnd.random() < 0.15 else "month"
        anchor = rnd.randint(1, 31)
        # The most recent anchored date on or before as_of: due now.
        d = as_of.date()
        start = anchored_date(d.year, d.month, anchor)
        if start > d:
            prev = d.replace(day=1) - dt.timedelta(days=1)
            start = anchored_date(prev.year, prev.month, anchor)
        card = rnd.choice(DECLINING_CARDS) if rnd.random() < decline_rate else "pm_card_visa"
        rows.append(
            (
                i,
                f"Customer {i}",
                f"customer{i}@example.com",
                rnd.choice((900, 1500, 2900, 4900, 9900)),
                rnd.choice(CURRENCIES),
                interval,
                anchor,
                dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC),
                "active",
                card,
                f"cus_{i:08d}",
            )
        )
    return rows


async def insert_accounts(conn: asyncpg.Connection, rows: list[tuple[object, ...]]) -> int:
    await conn.copy_records_to_table("accounts", records=rows, columns=COPY_COLUMNS)
    return len(rows)


async def next_free_id(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) + 1 FROM accounts"))
