"""The dashboard's queries read about a page of rows, whatever the tables hold, on a database
that was never analyzed (autovacuum off: Postgres has no statistics, as mid-run).

Counted in buffers (EXPLAIN (ANALYZE, BUFFERS)), not timed: the counts do not depend on load.
A seeded run of JOBS jobs spans about a thousand heap pages of billing_jobs, so a query that
scans the run or the table reads many times BOUND; each test also measures the statement it
replaced, to show the count tells the two apart.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.billing.jobs import JOB_STATES
from shared.config import Settings
from shared.db import billing_repo, ops_repo, runs_repo
from shared.db.pool import create_pool

pytestmark = pytest.mark.integration

JOBS = 40_000
BOUND = 150  # buffers for a page of 100 rows, every index level and heap page counted

# 1 % open, 3 % declined, 1 % dead, 0.2 % already paid, the rest charged and invoiced (the
# bench's mix, smaller); one-off charges for 1 % of the accounts; refunds of 0.1 %.
SEED = [
    """
INSERT INTO accounts (id, name, email, amount_cents, currency, billing_interval,
                      billing_anchor_day, next_billing_at, status, payment_method)
SELECT i, 'a' || i, 'a' || i || '@example.com', 1000, 'USD', 'month', 1,
       timestamptz '2026-04-01', 'active', 'pm_card_visa'
  FROM generate_series(1, $1) i
""",
    "INSERT INTO billing_runs (id, as_of, state) VALUES (1, '2026-03-01T12:00:00Z', 'published')",
    """
INSERT INTO billing_jobs (run_id, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, state, attempts, finished_at)
SELECT 1, i, '2026-03-01', '2026-04-01', 'billq_' || i || '_2026-03-01', 1000, 'USD', s.state,
       1, CASE WHEN s.state <> 'published' THEN now() - interval '1 hour' END
  FROM generate_series(1, $1) i
 CROSS JOIN LATERAL (SELECT CASE WHEN i % 1000 < 10 THEN 'published'
                                 WHEN i % 1000 < 40 THEN 'failed'
                                 WHEN i % 1000 < 50 THEN 'dead'
                                 WHEN i % 1000 < 52 THEN 'already_paid'
                                 ELSE 'succeeded' END AS state) s
""",
    """
INSERT INTO billing_jobs (kind, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, state, attempts, finished_at)
SELECT 'oneoff', i, '2026-02-10', '2026-02-11', 'billq_' || i || '_oneoff_t', 500, 'USD',
       'succeeded', 1, now() - interval '2 hours'
  FROM generate_series(20, $1, 100) i
""",
    """
INSERT INTO charges (job_id, kind, account_id, period_start, period_end, amount_cents, currency,
                     idempotency_key, gateway_charge_id)
SELECT id, kind, account_id, period_start, period_end, amount_cents, currency, idempotency_key,
       'pi_' || id
  FROM billing_jobs WHERE state = 'succeeded'
""",
    """
INSERT INTO invoices (number, kind, account_id, period_start, period_end, amount_cents,
                      currency, status, job_id)
SELECT '2026-' || lpad(id::text, 7, '0'), kind, account_id, period_start, period_end,
       amount_cents, currency, CASE WHEN state = 'succeeded' THEN 'paid' ELSE 'open' END, id
  FROM billing_jobs WHERE state IN ('succeeded', 'failed')
""",
    """
INSERT INTO billing_jobs (kind, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, state, attempts, finished_at, refund_of)
SELECT 'refund', account_id, period_start, period_end, 'billq_refund_' || id || '_1', 100,
       currency, 'succeeded', 1, now(), id
  FROM charges WHERE kind = 'period' AND account_id % 1000 = 100
""",
    """
INSERT INTO refunds (job_id, charge_id, account_id, amount_cents, currency, gateway_refund_id,
                     idempotency_key)
SELECT id, refund_of, account_id, amount_cents, currency, 're_' || id, idempotency_key
  FROM billing_jobs WHERE kind = 'refund'
""",
]

# What the pages ran before: the catch-all job list, and the counts over billing_jobs.
OLD_LIST = """
SELECT id FROM billing_jobs
 WHERE ($1::text IS NULL OR state = $1) AND ($2::bigint IS NULL OR run_id = $2)
   AND ($3::bigint IS NULL OR account_id = $3) AND ($5::bigint IS NULL OR id < $5)
 ORDER BY id DESC LIMIT $4
"""
OLD_RUN_RATE = """
SELECT count(*) / 10.0 FROM billing_jobs
 WHERE run_id = $1 AND state IN ('succeeded', 'failed', 'dead', 'already_paid')
   AND finished_at > now() - interval '10 seconds'
"""
OLD_ACCOUNT_INVOICES = billing_repo.INVOICES
OLD_REFUNDED = """
SELECT r.currency, count(*) FROM refunds r JOIN charges c ON c.id = r.charge_id
  JOIN billing_jobs j ON j.id = c.job_id WHERE j.run_id = $1 GROUP BY r.currency
"""
OLD_OPEN_COUNT = """
SELECT count(*) FROM billing_jobs WHERE state IN ('pending', 'published', 'processing', 'retrying')
"""


@pytest.fixture
async def seeded(db: asyncpg.Connection) -> asyncpg.Connection:
    for sql in SEED:
        await (db.execute(sql, JOBS) if "$1" in sql else db.execute(sql))
    assert (
        await db.fetchval("SELECT count(*) FROM pg_stats WHERE tablename = 'billing_jobs'") == 0
    ), "the test is about a database without statistics"
    await db.execute("SET jit = off")  # as billq's connections (shared.db.pool)
    return db


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(settings, max_size=2)
    yield p
    await p.close()


async def buffers(db: asyncpg.Connection, sql: str, *args: object, setup: str = "") -> int:
    """Shared buffers (hit or read) one execution of ``sql`` touches, rolled back."""
    tr = db.transaction()
    await tr.start()
    try:
        if setup:
            await db.execute(setup)
        plan = json.loads(
            await db.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
        )
        top = plan[0]["Plan"]
        return int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))
    finally:
        await tr.rollback()


PAGES = [
    ops_repo.JobsPage(None, None, None, 100),
    ops_repo.JobsPage(None, None, None, 100, before=1_000),
    ops_repo.JobsPage(None, 1, None, 100),
    ops_repo.JobsPage(None, 1, None, 100, before=1_000),  # the last pages of the run
    *(ops_repo.JobsPage(s, None, None, 100) for s in JOB_STATES),  # 'processing': none at all
    *(ops_repo.JobsPage(s, 1, None, 100) for s in JOB_STATES),
    ops_repo.JobsPage("dead", 1, None, 100, before=5_000),
    ops_repo.JobsPage(None, None, 20, 100),
    ops_repo.JobsPage("succeeded", None, 20, 100),
    ops_repo.JobsPage("succeeded", 1, 20, 100),
]


async def test_every_jobs_page_reads_about_a_page(seeded: asyncpg.Connection) -> None:
    for statistics in ("none", "analyzed"):  # a plan for either must keep to the index
        if statistics == "analyzed":
            await seeded.execute("ANALYZE")
        read = {}
        for page in PAGES:
            sql, args = ops_repo.list_query(page)
            read[page] = await buffers(seeded, sql, *args, setup=ops_repo.IN_INDEX_ORDER)
        assert {p: n for p, n in read.items() if n >= BOUND} == {}, statistics
    # The statement /jobs ran before: an account's page scanned the table backwards.
    assert await buffers(seeded, OLD_LIST, None, None, 20, 100, None) > 5 * BOUND


FIGURES: list[tuple[str, str, str | None, list[object]]] = [  # name, new, old, arguments
    ("run rate", runs_repo.RECENT_RATE, OLD_RUN_RATE, [1]),
    (
        "account invoices",
        billing_repo.ACCOUNT_INVOICES,
        OLD_ACCOUNT_INVOICES,
        [20, None, None, 100, None],
    ),
    ("invoices, first page", billing_repo.INVOICES, None, [None, None, None, 100, None]),
    (
        "invoices, a later page",
        billing_repo.INVOICES,
        None,
        [None, None, None, 100, "2026-0020000"],
    ),
    ("refunded", billing_repo.REFUNDED, OLD_REFUNDED, [1]),
    ("settle", runs_repo.SETTLE_RUN, None, [1]),
    ("drain rate", ops_repo.RECENT_RATE, None, [60]),
]


async def test_page_figures_read_summary_rows_or_keys(seeded: asyncpg.Connection) -> None:
    await seeded.execute("SELECT billq_fold_run_summaries()")
    for name, new, old, args in FIGURES:
        assert (read := await buffers(seeded, new, *args)) < BOUND, f"{name}: {read} buffers"
        if old is not None:  # the count tells the two apart
            assert (read := await buffers(seeded, old, *args)) > 3 * BOUND, f"{name} (old): {read}"


async def test_open_jobs_are_counted_from_summaries_right_after_publishing(
    seeded: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await seeded.execute("UPDATE billing_jobs SET state = 'published' WHERE id % 3 = 0")
    assert await ops_repo.open_count(pool) == await seeded.fetchval(OLD_OPEN_COUNT)
    assert (read := await buffers(seeded, ops_repo.OPEN_COUNT)) < BOUND, read
    assert (read := await buffers(seeded, OLD_OPEN_COUNT)) > 2 * BOUND, read
    assert (read := await buffers(seeded, runs_repo.SETTLE_RUN, 1)) < BOUND, read


def _expected_where(page: ops_repo.JobsPage) -> tuple[str, list[object]]:
    where: list[str] = ["true"]
    args: list[object] = []
    for column, value in (
        ("state", page.state),
        ("run_id", page.run),
        ("account_id", page.account),
    ):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    return " AND ".join(where), args


WALKS = [
    ops_repo.JobsPage(None, 1, None, 1000),
    ops_repo.JobsPage("failed", None, None, 500),
    ops_repo.JobsPage("published", None, None, 100),
    ops_repo.JobsPage(None, None, 20, 1),
    ops_repo.JobsPage("dead", 1, None, 100),
]


async def test_keyset_pages_walk_every_job_once_newest_first(
    seeded: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    for page in WALKS:
        seen: list[int] = []
        before = None
        while rows := await ops_repo.list_jobs(
            pool, ops_repo.JobsPage(page.state, page.run, page.account, page.limit, before)
        ):
            seen += [int(r["id"]) for r in rows]
            before = seen[-1]
        where, args = _expected_where(page)
        expected = [
            int(r["id"])
            for r in await seeded.fetch(
                f"SELECT id FROM billing_jobs WHERE {where} ORDER BY id DESC", *args
            )
        ]
        assert seen == expected and expected, page


async def test_summary_figures_match_the_jobs(
    seeded: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    assert await ops_repo.open_count(pool) == await seeded.fetchval(OLD_OPEN_COUNT)
    refunded = await pool.fetch(billing_repo.REFUNDED, 1)
    assert [(r["currency"], r["refunds"]) for r in refunded] == [
        (r["currency"], r["count"]) for r in await seeded.fetch(OLD_REFUNDED, 1)
    ]
    assert [r["number"] for r in await billing_repo.invoices(pool, 20, None, 100)] == [
        r["number"]
        for r in await seeded.fetch(
            "SELECT number FROM invoices WHERE account_id = 20 ORDER BY number"
        )
    ]
