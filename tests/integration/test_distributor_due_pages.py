"""The distributor's keyset pages over due accounts cost the same at the end of a big run as
at its start: the check "this account has no job in this run yet" looks at the account's own
jobs, never at every job the run already has."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from testkit import seed

from shared.db import runs_repo

pytestmark = pytest.mark.integration

AS_OF = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
PAGE = 200


async def _page_plan(db: asyncpg.Connection, run_id: int, after_id: int) -> dict[str, Any]:
    plan_text = await db.fetchval(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + runs_repo.DUE_PAGE,
        AS_OF,
        None,
        None,
        dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
        after_id,
        run_id,
        PAGE,
    )
    plan: dict[str, Any] = json.loads(plan_text)[0]["Plan"]
    return plan


async def test_a_due_page_reads_only_its_accounts_own_jobs_however_many_the_run_has(
    db: asyncpg.Connection,
) -> None:
    await seed(db, 8_000)
    # No statistics on the jobs (as mid-run, before autovacuum catches up with a new run): the
    # planner guesses "jobs of this run" are a handful of rows.
    await db.execute("ALTER TABLE billing_jobs SET (autovacuum_enabled = off)")
    await db.execute("ANALYZE accounts")  # as an import leaves them
    # Every account was billed last month; this month's run has got through three quarters.
    last_month = await _run(db, dt.date(2026, 2, 1), 8_000)
    run_id = await _run(db, dt.date(2026, 3, 1), 6_000)
    assert last_month != run_id
    # Workers moved them on: each update leaves another entry in the (run_id, state) index.
    for state in ("published", "processing", "succeeded"):
        await db.execute("UPDATE billing_jobs SET state = $1", state)
    plan = await _page_plan(db, run_id, 6_000)
    assert plan["Actual Rows"] == PAGE
    # Per account, each job lookup is one index probe of a few pages. Scanning the run's
    # jobs instead costs tens of pages per account here and grows with the run: the pages of
    # a 400,000-account soak went quadratic (20 s a page at 39,000 jobs).
    probes = [n for n in _nodes(plan) if n.get("Index Name", "").startswith("billing_jobs")]
    assert probes
    for probe in probes:
        per_account = probe["Shared Hit Blocks"] / max(1, probe["Actual Loops"])
        assert per_account < 10, json.dumps(plan, indent=1)


async def _run(db: asyncpg.Connection, period: dt.date, accounts: int) -> int:
    """A run with one job for each of the first ``accounts`` accounts."""
    run_id: int = await db.fetchval(
        "INSERT INTO billing_runs (as_of) VALUES ($1) RETURNING id", AS_OF
    )
    await db.execute(
        """
        INSERT INTO billing_jobs (run_id, account_id, period_start, period_end, idempotency_key,
                                  amount_cents, currency, dunning_attempt, payment_method)
        SELECT $1, i, $2::date, ($2::date + interval '1 month')::date,
               'billq_' || i || '_' || $2::date, 1000, 'USD', 0, 'pm_card_visa'
          FROM generate_series(1, $3::int) AS i
        """,
        run_id,
        period,
        accounts,
    )
    return run_id


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)
