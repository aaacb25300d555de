"""Invoice and credit-note numbers past 999,999 in a year.

A 1,000,000-account soak stopped at its last account: lpad() truncated the year's
1,000,000th invoice number to '2026-100000', which collided with the 100,000th, so the charge
the gateway had taken could never be recorded.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest
from testkit import claimed_jobs, seed

from shared.db import jobs_repo

pytestmark = pytest.mark.integration

BATCH = 3


def _year() -> int:
    return dt.datetime.now(dt.UTC).year


async def _processing_jobs(db: asyncpg.Connection) -> list[asyncpg.Record]:
    await seed(db, BATCH)
    run = await db.fetchval(
        "INSERT INTO billing_runs (as_of) VALUES ($1) RETURNING id",
        dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC),
    )
    return await claimed_jobs(db, run, 1, BATCH)


@pytest.mark.parametrize("last", [999_998, 9_999_999])
async def test_a_group_commit_numbers_invoices_past_a_million(
    db: asyncpg.Connection, last: int
) -> None:
    jobs = await _processing_jobs(db)
    # The year's earlier invoices: the numbers a truncated one would collide with.
    await db.execute("INSERT INTO invoice_counters (year, last) VALUES ($1, $2)", _year(), last)
    for month, n in enumerate(sorted({last // 10, last // 100, last}), start=1):
        await db.execute(
            """INSERT INTO invoices (number, account_id, period_start, period_end, amount_cents,
                                     currency, status)
               VALUES ($1, 1, make_date(2025, $2, 1), make_date(2025, $2 + 1, 1), 1, 'USD',
                       'paid')""",
            f"{_year()}-{n:06d}",
            month,
        )

    rows = await db.fetch(
        jobs_repo.RECORD_SUCCESSES,
        [r["id"] for r in jobs],
        [r["attempts"] for r in jobs],
        [f"ch_{r['id']}" for r in jobs],
    )

    assert len(rows) == BATCH
    numbers = await db.fetch("SELECT number FROM invoices WHERE job_id IS NOT NULL ORDER BY job_id")
    assert [r["number"] for r in numbers] == [
        f"{_year()}-{last + i:06d}" for i in range(1, BATCH + 1)
    ]
    assert await db.fetchval("SELECT count(*) FROM charges") == BATCH


async def test_single_invoice_and_credit_note_numbers_grow_past_six_digits(
    db: asyncpg.Connection,
) -> None:
    year = _year()
    await db.execute("INSERT INTO invoice_counters (year, last) VALUES ($1, 999999)", year)
    await db.execute("INSERT INTO credit_note_counters (year, last) VALUES ($1, 999999)", year)

    assert await db.fetchval("SELECT billq_next_invoice_number($1)", year) == f"{year}-1000000"
    assert await db.fetchval("SELECT billq_next_credit_note_number($1)", year) == (
        f"CN-{year}-1000000"
    )
    # Below a million nothing changes: six digits, zero-padded.
    assert await db.fetchval("SELECT billq_next_invoice_number($1)", year + 1) == (
        f"{year + 1}-000001"
    )
