"""An operator's ``jobs cancel`` never hides a refund that may have been made at the gateway."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
import testkit
from testkit import all_terminal, distribute, seed

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def test_a_refund_job_a_worker_already_tried_is_never_cancelled(
    db: asyncpg.Connection, tmp_env: dict[str, str], tmp_path: Path
) -> None:
    await seed(db, 1)
    distribute(tmp_env)
    worker = testkit.spawn("worker", env=tmp_env, log=tmp_path / "w.log")
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)
    finally:
        testkit.stop_process(worker)
    charge = await testkit.fetchrow(db, "SELECT * FROM charges")
    # A refund job whose first call got no answer (it may have refunded): retrying, tried once.
    # A distinct dunning_attempt keeps it clear of the period's own job in any unique key.
    job_id = await db.fetchval(
        "INSERT INTO billing_jobs (run_id, account_id, period_start, period_end,"
        " idempotency_key, amount_cents, currency, refund_of, state, attempts, dunning_attempt)"
        " SELECT run_id, account_id, period_start, period_end, $2, 300, currency, $1,"
        " 'retrying', 1, 7 FROM billing_jobs WHERE id = $3 RETURNING id",
        charge["id"],
        f"billq_refund_{charge['id']}_1",
        charge["job_id"],
    )

    refused = testkit.billq("jobs", "cancel", str(job_id), env=tmp_env, check=False)

    assert refused.returncode == 1
    assert "refund" in refused.stderr and "not cancelled" in refused.stderr
    job = await testkit.fetchrow(db, "SELECT * FROM billing_jobs WHERE id = $1", job_id)
    assert (job["state"], job["attempts"], job["cancelled_at"]) == ("retrying", 1, None)
