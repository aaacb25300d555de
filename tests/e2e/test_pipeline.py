"""The whole pipeline as operators run it: subprocess distributor and workers,
real RabbitMQ, real Postgres, the sandbox gateway over HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import asyncpg
import pytest
import testkit
from testkit import AS_OF, all_terminal, assert_charged_once, distribute, seed

from shared.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def start_workers(
    n: int, env: dict[str, str], tmp: Path, *flags: str
) -> list[subprocess.Popen[bytes]]:
    return [testkit.spawn("worker", *flags, env=env, log=tmp / f"worker{i}.log") for i in range(n)]


async def test_every_due_account_is_charged_exactly_once_by_two_workers(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    declining = {7, 21, 42}
    await seed(
        db,
        150,
        card=lambda i: (
            "pm_card_chargeDeclinedInsufficientFunds" if i in declining else "pm_card_visa"
        ),
    )
    # Not due, cancelled: never touched.
    await seed(db, 5, start=1000)
    await db.execute("UPDATE accounts SET next_billing_at = '2026-04-01Z' WHERE id >= 1000")
    await seed(db, 3, start=2000)
    await db.execute("UPDATE accounts SET status = 'cancelled' WHERE id >= 2000")

    summary = distribute(tmp_env)
    assert summary["due"] == 150 and summary["published"] == 150
    workers = start_workers(2, tmp_env, tmp_path, "--concurrency", "16")
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=90)
    finally:
        codes = [testkit.stop_process(w) for w in workers]
    assert codes == [0, 0]
    await assert_charged_once(db, gateway_url, settings, expect_charged=147)
    by_state = await db.fetch("SELECT state, count(*) FROM billing_jobs GROUP BY state")
    states = {r["state"]: r["count"] for r in by_state}
    assert states == {"succeeded": 147, "failed": 3}
    past_due = {r["id"] for r in await db.fetch("SELECT id FROM accounts WHERE status='past_due'")}
    assert past_due == declining
    advanced = await db.fetchval(
        "SELECT count(*) FROM accounts WHERE next_billing_at = '2026-04-01Z' AND id < 1000"
    )
    assert advanced == 147
    # A second run for the same as-of finds nothing new to bill.
    again = distribute(tmp_env)
    # The declined ones wait for their dunning retry (3 days later).
    assert again["published"] == 0 and again["due"] == 0
    assert await db.fetchval("SELECT count(*) FROM billing_jobs") == 150


async def test_running_the_distributor_twice_and_concurrently_creates_one_job_per_account(
    db: asyncpg.Connection,
    tmp_env: dict[str, str],
) -> None:
    await seed(db, 300)
    procs = [
        subprocess.Popen(
            [*testkit.billq_cmd(), "distribute", "--as-of", AS_OF, "--json", "--batch-size", "50"],
            env=tmp_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    summaries = [json.loads(o[0]) for o in outs]
    assert sum(s["new_jobs"] for s in summaries) == 300
    assert sum(1 for s in summaries if s["locked"]) == sum(
        1 for s in summaries if s["due"] == 0 and s["locked"]
    )
    distribute(tmp_env)
    assert await db.fetchval("SELECT count(*) FROM billing_jobs") == 300
    assert await db.fetchval("SELECT count(DISTINCT account_id) FROM billing_jobs") == 300


async def test_a_worker_killed_mid_charge_is_taken_over_and_charged_once(
    db: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
) -> None:
    with testkit.sandbox_gateway(tmp_path, "--latency-ms", "300") as url:
        env = testkit.env_for(settings.model_copy(update={"gateway_url": url}))
        await seed(db, 40)
        distribute(env)
        [victim] = start_workers(1, env, tmp_path, "--concurrency", "20")

        async def some_processing() -> bool:
            n = await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state='processing'")
            return bool(n >= 5)

        await testkit.wait_until(some_processing, timeout=30, interval=0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        [rescuer] = start_workers(1, env, tmp_path / "..", "--concurrency", "20")
        try:
            await testkit.wait_until(lambda: all_terminal(db), timeout=90)
        finally:
            testkit.stop_process(rescuer)
        await assert_charged_once(db, url, settings, expect_charged=40)
        taken_over = await db.fetchval("SELECT count(*) FROM billing_jobs WHERE attempts > 1")
        assert taken_over >= 5


async def test_transient_gateway_failures_are_retried_with_backoff_then_charged_once(
    db: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
) -> None:
    with testkit.sandbox_gateway(tmp_path, "--fail-rate", "0.4", "--seed", "3") as url:
        env = testkit.env_for(settings.model_copy(update={"gateway_url": url}))
        await seed(db, 60)
        distribute(env)
        workers = start_workers(1, env, tmp_path, "--concurrency", "16")
        try:
            await testkit.wait_until(lambda: all_terminal(db), timeout=120)
        finally:
            [testkit.stop_process(w) for w in workers]
        await assert_charged_once(db, url, settings, expect_charged=60)
        retried = await db.fetchval("SELECT count(*) FROM billing_jobs WHERE attempts > 1")
        assert retried > 0
        assert await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state='succeeded'") == 60


async def test_poison_messages_are_dead_lettered_with_reason_and_the_worker_keeps_consuming(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    workers = start_workers(1, tmp_env, tmp_path, "--concurrency", "4")
    try:
        # Wait for the worker to declare the topology.
        async def consuming() -> bool:
            depths = await testkit.queue_depths(settings)
            return depths.get(f"{settings.queue_prefix}.charge", (0, 0))[1] == 1

        await testkit.wait_until(consuming, timeout=30)
        await testkit.publish_raw(settings, b"not json at all")
        await testkit.publish_raw(settings, b'{"schema_version": 1, "job_id": "x"}')
        await testkit.publish_raw(
            settings,
            json.dumps(
                {
                    "schema_version": 1,
                    "job_id": 999999,
                    "account_id": 5,
                    "period_start": "2026-03-01",
                    "idempotency_key": "billq_5_2026-03-01",
                }
            ).encode(),
        )
        await testkit.publish_raw(settings, b"x" * 100_000)
        # Ids past Postgres's bigint: once a DataError retried forever, now the message's fault.
        await testkit.publish_raw(
            settings,
            json.dumps(
                {
                    "schema_version": 1,
                    "job_id": 2**63,
                    "account_id": 5,
                    "period_start": "2026-03-01",
                    "idempotency_key": "billq_5_2026-03-01",
                }
            ).encode(),
        )
        await seed(db, 3)
        distribute(tmp_env)
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)

        async def five_dead() -> bool:
            depths = await testkit.queue_depths(settings)
            return depths[f"{settings.queue_prefix}.charge.dead"][0] >= 5

        await testkit.wait_until(five_dead, timeout=30)
        assert workers[0].poll() is None, "worker died on bad input"
    finally:
        assert testkit.stop_process(workers[0]) == 0
    dead = await testkit.get_dead_letters(settings)
    reasons = sorted(str(m.headers["x-billq-error"]) for m in dead)
    classes = sorted(str(m.headers["x-billq-error-class"]) for m in dead)
    assert classes == ["InvalidMessage"] * 4 + ["UnknownJob"]
    assert any("job_id" in r and "less than or equal" in r for r in reasons)
    assert any("not JSON" in r for r in reasons)
    assert any("schema violation" in r for r in reasons)
    assert any("exceeds" in r for r in reasons)
    assert any("job 999999 does not exist" in r for r in reasons)
    await assert_charged_once(db, gateway_url, settings, expect_charged=3)


async def test_sigterm_with_work_in_flight_finishes_and_acks_nothing_redelivered(
    db: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
) -> None:
    with testkit.sandbox_gateway(tmp_path, "--latency-ms", "800") as url:
        env = testkit.env_for(settings.model_copy(update={"gateway_url": url}))
        await seed(db, 30)
        distribute(env)
        [worker] = start_workers(1, env, tmp_path, "--concurrency", "10")

        async def in_flight() -> bool:
            n = await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state='processing'")
            return bool(n >= 5)

        await testkit.wait_until(in_flight, timeout=30, interval=0.05)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        held = await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state='processing'")
        assert held == 0, "in-flight work was abandoned"
        done = await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state='succeeded'")
        assert done >= 5
        # The rest are still queued, untouched; a new worker finishes them, no redelivery.
        [worker2] = start_workers(1, env, tmp_path, "--concurrency", "10")
        try:
            await testkit.wait_until(lambda: all_terminal(db), timeout=60)
        finally:
            testkit.stop_process(worker2)
        assert await db.fetchval("SELECT max(attempts) FROM billing_jobs") == 1
        await assert_charged_once(db, url, settings, expect_charged=30)
        await asyncio.sleep(0)


async def test_sharded_distributors_run_at_once_and_feed_one_run(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 90)
    procs = [
        subprocess.Popen(
            [
                *testkit.billq_cmd(),
                "distribute",
                "--as-of",
                AS_OF,
                "--json",
                "--shard",
                f"{k}/3",
                "--batch-size",
                "10",
            ],
            env=tmp_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    summaries = [json.loads(o[0]) for o in outs]
    assert not any(s["locked"] for s in summaries)  # each shard has its own lock
    assert sorted(s["due"] for s in summaries) == [30, 30, 30]
    assert len({s["run_id"] for s in summaries}) == 1
    run = await testkit.fetchrow(db, "SELECT * FROM billing_runs")
    assert (run["due"], run["published"], run["shards_done"], run["state"]) == (
        90,
        90,
        3,
        "published",
    )
    workers = start_workers(1, tmp_env, tmp_path)
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)
    finally:
        testkit.stop_process(workers[0])
    await assert_charged_once(db, gateway_url, settings, expect_charged=90)
