"""Invoice and credit-note numbers past 999,999 in a year.

A 1,000,000-account soak stopped at its last account: lpad() truncated the year's
1,000,000th invoice number to '2026-100000', which collided with the 100,000th, so the charge
the gateway had taken could never be recorded.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
import testkit
from testkit import claimed_jobs, seed

from shared.config import Settings
from shared.db import billing_repo, jobs_repo
from shared.db.pool import create_pool

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


# --- listings: number order past 999,999 -----------------------------------------------------


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(settings, max_size=2)
    yield p
    await p.close()


async def _invoices_across_a_million(db: asyncpg.Connection) -> list[str]:
    """The year's invoices 999,998 to 1,000,002 between last year's 1,000,000th and next
    year's first, inserted out of number order (ids say nothing of it); in number order."""
    year = _year()
    numbers = [
        f"{year - 1}-1000000",
        *(f"{year}-{n:06d}" for n in range(999_998, 1_000_003)),
        f"{year + 1}-000001",
    ]
    for i in (3, 0, 6, 1, 5, 2, 4):
        await db.execute(
            """INSERT INTO invoices (number, account_id, period_start, period_end, amount_cents,
                                     currency, status)
               VALUES ($1, 1, make_date(2020, 1, 1) + $2 * 31, make_date(2020, 1, 1) + $2 * 31
                       + 30, 1, 'USD', 'paid')""",
            numbers[i],
            i,
        )
    # As text, '2026-1000000' came before '2026-100001' and last year's after this year's.
    as_text = [r["number"] for r in await db.fetch("SELECT number FROM invoices ORDER BY number")]
    assert as_text != numbers
    return numbers


@pytest.mark.parametrize("account", [None, 1])
async def test_invoices_list_in_number_order_across_a_million(
    db: asyncpg.Connection, pool: asyncpg.Pool, account: int | None
) -> None:
    numbers = await _invoices_across_a_million(db)

    rows = await billing_repo.invoices(pool, account, None, 100)

    assert [r["number"] for r in rows] == numbers


@pytest.mark.parametrize("account", [None, 1])
async def test_invoice_pages_across_a_million_return_each_invoice_once(
    db: asyncpg.Connection, pool: asyncpg.Pool, account: int | None
) -> None:
    numbers = await _invoices_across_a_million(db)

    pages: list[list[str]] = []
    after: str | None = None
    while rows := await billing_repo.invoices(pool, account, None, 2, after):
        pages.append([r["number"] for r in rows])
        after = pages[-1][-1]

    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [n for p in pages for n in p] == numbers


async def test_the_cli_pages_invoices_and_shows_one_past_six_digits(
    db: asyncpg.Connection, settings: Settings
) -> None:
    numbers = await _invoices_across_a_million(db)
    env = testkit.env_for(settings)
    year = _year()

    page = testkit.billq(
        "invoices", "list", "--after", f"{year}-999999", "--limit", "3", "--json", env=env
    )
    shown = testkit.billq("invoices", "show", f"{year}-1000000", "--json", env=env)

    assert [r["number"] for r in json.loads(page.stdout)] == numbers[3:6]
    assert json.loads(shown.stdout)["number"] == f"{year}-1000000"


async def test_credit_note_numbers_order_by_year_then_sequence(db: asyncpg.Connection) -> None:
    numbers = ["CN-2025-1000000", "CN-2026-999999", "CN-2026-1000000", "CN-2026-1000001"]
    ordered = await db.fetch(
        "SELECT n FROM unnest($1::text[]) n ORDER BY billq_number_order(n), n",
        list(reversed(numbers)),
    )
    assert [r["n"] for r in ordered] == numbers
