"""The distributor and the workers touch the same job rows: the distributor must never wait
for a worker's row lock (no deadlock), and Postgres's deadlock and serialization aborts are
retried a few times, then reported in one line."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import pytest
from testkit import seed

from shared.config import Settings
from shared.db import runs_repo
from shared.db.errors import CONFLICT_TRIES, retried_on_conflict
from shared.db.pool import create_pool
from shared.errors import DatabaseUnavailable

pytestmark = pytest.mark.integration


async def pending_jobs(pool: asyncpg.Pool, n: int) -> list[int]:
    run_id = await runs_repo.create_run(pool, dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    ids = list(range(1, n + 1))
    cols = [
        ids,
        [dt.date(2026, 3, 1)] * n,
        [dt.date(2026, 4, 1)] * n,
        [f"billq_{i}_2026-03-01" for i in ids],
        [1000] * n,
        ["USD"] * n,
        [0] * n,
        ["pm_card_visa"] * n,
        [None] * n,
    ]
    rows = await runs_repo.insert_jobs(pool, run_id, cols)  # type: ignore[arg-type]
    return sorted(r["id"] for r in rows)


async def test_marking_published_skips_rows_a_worker_is_claiming_instead_of_waiting(
    db: asyncpg.Connection, settings: Settings
) -> None:
    await seed(db, 6)
    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        jobs = await pending_jobs(pool, 6)
        held = jobs[2]
        worker = await asyncpg.connect(settings.database_url.get_secret_value())
        try:
            async with worker.transaction():
                # A worker's claim holds this row until it commits.
                await worker.execute(
                    "UPDATE billing_jobs SET state = 'processing' WHERE id = $1", held
                )
                # Would block forever (and deadlock with a claim) if it waited: the guard
                # only turns such a hang into a failure.
                await asyncio.wait_for(runs_repo.mark_published(pool, jobs[::-1]), 30)
        finally:
            await worker.close()
        states: dict[Any, Any] = {
            r[0]: r[1] for r in await db.fetch("SELECT id, state FROM billing_jobs")
        }
        assert states == {j: ("processing" if j == held else "published") for j in jobs}
    finally:
        await pool.close()


async def test_a_deadlock_is_retried_and_one_that_persists_is_reported_in_one_line() -> None:
    calls = 0

    @retried_on_conflict
    async def flaky(fail_times: int) -> str:
        nonlocal calls
        calls += 1
        if calls <= fail_times:
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return "done"

    assert await flaky(2) == "done" and calls == 3
    calls = 0
    with pytest.raises(DatabaseUnavailable, match="aborted it 5 times in a row") as caught:
        await flaky(100)
    assert calls == CONFLICT_TRIES == 5
    assert "DeadlockDetectedError" in str(caught.value) and "\n" not in str(caught.value)


async def test_the_scan_gives_each_account_one_period_per_run_while_workers_advance_them(
    db: asyncpg.Connection, settings: Settings
) -> None:
    # Three periods behind: every charge leaves the account still due, further on in the
    # scan's (next_billing_at, id) order. Short statements see that; the run must not.
    await seed(db, 7)
    await db.execute("UPDATE accounts SET next_billing_at = '2025-12-01Z'")
    as_of = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        run_id = await runs_repo.create_run(pool, as_of)
        seen: list[int] = []
        async for rows in runs_repo.scan_due(pool, as_of, 2, None, run_id):
            ids = [r["id"] for r in rows]
            seen += ids
            n = len(ids)
            await runs_repo.insert_jobs(
                pool,
                run_id,
                [
                    ids,
                    [r["next_billing_at"].date() for r in rows],
                    [dt.date(2026, 1, 1)] * n,
                    [f"billq_{i}_2025-12-01" for i in ids],
                    [1000] * n,
                    ["USD"] * n,
                    [0] * n,
                    ["pm_card_visa"] * n,
                    [None] * n,
                ],
            )
            # A worker charges them at once: each moves a month on, still due.
            await db.execute(
                "UPDATE accounts SET next_billing_at = next_billing_at + interval '1 month'"
                " WHERE id = ANY($1::bigint[])",
                ids,
            )
        assert sorted(seen) == list(range(1, 8))
    finally:
        await pool.close()
