"""The admin CLI against real queues and data: queues, dlq, jobs, workers, scale-hint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import testkit
from testkit import all_terminal, assert_charged_once, distribute, seed

from shared.config import Settings
from shared.views import scale_hint

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def cli_json(env: dict[str, str], *args: str) -> Any:
    """The command's ``--json`` output (a JSON document: shapes vary by command)."""
    return json.loads(testkit.billq(*args, "--json", env=env).stdout)


async def test_queues_jobs_cancel_and_workers_reflect_the_real_state(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 12)
    distribute(tmp_env)
    queues = {q["role"] + q["queue"]: q for q in cli_json(tmp_env, "queues")}
    work = queues[f"work{settings.queue_prefix}.charge"]
    assert work["ready"] == 12 and work["consumers"] == 0

    published = cli_json(tmp_env, "jobs", "--state", "published")
    assert len(published) == 12
    victim = published[0]["id"]
    assert "cancelled" in testkit.billq("jobs", "cancel", str(victim), env=tmp_env).stdout
    again = testkit.billq("jobs", "cancel", str(victim), env=tmp_env, check=False)
    assert again.returncode == 1 and "dead" in again.stderr

    worker = testkit.spawn("worker", env=tmp_env, log=tmp_path / "w.log")
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)
        listed = cli_json(tmp_env, "workers")
        assert len(listed) == 1 and listed[0]["status"] == "live"
        # No 429 from this gateway: the adaptive limit sits at BILLQ_CONCURRENCY's default.
        assert listed[0]["gateway_limit"] == 256
    finally:
        testkit.stop_process(worker)
    # The cancelled job's message was acked as a duplicate: no charge for it.
    await assert_charged_once(db, gateway_url, settings, expect_charged=11)
    assert cli_json(tmp_env, "workers") == []  # deregistered on a clean stop
    hint = cli_json(tmp_env, "scale-hint", "--deadline", "2030-01-01")
    assert hint["open_jobs"] == 0 and hint["workers_needed"] == 0


async def test_dead_letters_are_listed_shown_replayed_into_their_jobs_and_purged(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 3)
    distribute(tmp_env)
    # Cancelled between distribution and processing: the job dies with the reason.
    await db.execute("UPDATE accounts SET status = 'cancelled' WHERE id = 2")
    await testkit.publish_raw(settings, b"garbage")
    worker = testkit.spawn("worker", env=tmp_env, log=tmp_path / "w1.log")
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)

        async def two_dead() -> bool:
            return (await testkit.queue_depths(settings))[f"{settings.queue_prefix}.charge.dead"][
                0
            ] == 2

        await testkit.wait_until(two_dead, timeout=20)
    finally:
        testkit.stop_process(worker)
    letters = cli_json(tmp_env, "dlq", "list")
    assert sorted(x["error_class"] for x in letters) == ["AccountNotBillable", "InvalidMessage"]
    dead_job = next(x for x in letters if x["job_id"] is not None)
    assert "cancelled" in dead_job["error"]
    shown = cli_json(tmp_env, "dlq", "show", dead_job["id"])
    assert shown["headers"]["x-billq-error-class"] == "AccountNotBillable"
    assert len(cli_json(tmp_env, "dlq", "list")) == 2  # listing never consumes

    # The customer comes back; the operator replays the dead letter.
    await db.execute("UPDATE accounts SET status = 'active' WHERE id = 2")
    out = cli_json(tmp_env, "dlq", "replay", dead_job["id"])
    assert out["replayed"] == [dead_job["id"]]
    assert out["jobs_revived"] == [dead_job["job_id"]]
    row = await testkit.fetchrow(
        db, "SELECT state, replays, last_error FROM billing_jobs WHERE id = $1", dead_job["job_id"]
    )
    assert row["state"] == "published" and row["replays"] == 1
    assert "replayed" in row["last_error"]
    worker = testkit.spawn("worker", env=tmp_env, log=tmp_path / "w2.log")
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)
    finally:
        testkit.stop_process(worker)
    await assert_charged_once(db, gateway_url, settings, expect_charged=3)

    refused = testkit.billq("dlq", "purge", env=tmp_env, check=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert "1 dead letter" in testkit.billq("dlq", "purge", "--yes", env=tmp_env).stdout
    assert cli_json(tmp_env, "dlq", "list") == []


def test_scale_hint_arithmetic() -> None:
    hint = scale_hint(open_jobs=36_000, rate=100.0, live_workers=2, seconds_left=60)
    assert hint["per_worker_rate_per_s"] == 50.0 and hint["workers_needed"] == 12
    assert scale_hint(10, 0.0, 0, 60)["workers_needed"] is None
    assert scale_hint(0, 0.0, 0, 60)["workers_needed"] == 0
