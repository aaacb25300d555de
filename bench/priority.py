"""The priority lane row: how soon a priority charge is made while a big bulk run drains.

The bulk run (``n`` due accounts, 50,000 by default) is distributed first; two workers (the
default concurrency, the in-process gateway) drain it. Meanwhile, every round adds a
few accounts whose dunning retry is due — past due, one period earlier than the bulk run, so
only they are due at ``PRIORITY_AS_OF`` — and runs ``billq distribute`` for them: each becomes
a dunning-retry job, which billq routes to the priority lane. Latency per priority job is
published → committed, from the timestamps Postgres recorded; the row says how many bulk
jobs were still open when each priority job was published (it must be "during" the run).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from typing import TYPE_CHECKING, Any

from bench import infra

if TYPE_CHECKING:
    from bench.run import Bench

PRIORITY_AS_OF = "2026-02-05T12:00:00Z"
PRIORITY_DUE_AT = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
PRIORITY_ADVANCED = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
FIRST_ID = 100_000_000
PER_ROUND = 10
ATTEMPTS = 5
# Rounds stop once the bulk backlog is this small: later ones would not be "during" the run.
MIN_BULK_OPEN = 0.1

OPEN_BULK = "SELECT count(*) FROM billing_jobs WHERE dunning_attempt = 0 AND state <> 'succeeded'"

FIGURES = """
SELECT count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM finished_at - published_at)) AS p50,
       percentile_cont(0.99) WITHIN GROUP (
           ORDER BY extract(epoch FROM finished_at - published_at)) AS p99,
       max(extract(epoch FROM finished_at - published_at)) AS worst
  FROM billing_jobs WHERE dunning_attempt = 1 AND state = 'succeeded'
"""

# For each priority job: the bulk jobs not yet finished when it was published.
BULK_OPEN_AT_PUBLISH = """
SELECT min(open), max(open) FROM (
  SELECT (SELECT count(*) FROM billing_jobs b
           WHERE b.dunning_attempt = 0
             AND (b.finished_at IS NULL OR b.finished_at > d.published_at)) AS open
    FROM billing_jobs d WHERE d.dunning_attempt = 1) per_job
"""


async def seed_due_retries(database: str, first: int, count: int) -> None:
    """Accounts past due since ``PRIORITY_DUE_AT`` whose first dunning retry is due."""
    conn = await infra.connect(database)
    try:
        rows = [
            (
                i,
                f"Retry {i}",
                f"retry{i}@example.com",
                1500,
                "USD",
                "month",
                1,
                PRIORITY_DUE_AT,
                "past_due",
                "pm_card_visa",
                f"cus_{i:09d}",
                1,
                PRIORITY_DUE_AT + dt.timedelta(days=1),
                PRIORITY_DUE_AT,
            )
            for i in range(first, first + count)
        ]
        await conn.copy_records_to_table(
            "accounts",
            records=rows,
            columns=(
                *infra.ACCOUNT_COLUMNS,
                "dunning_attempt",
                "dunning_next_at",
                "first_declined_at",
            ),
        )
    finally:
        await conn.close()


def distribute_retries(bench: Bench, db: str, prefix: str, settings: dict[str, str]) -> None:
    """``billq distribute`` as cron runs it: exit 1 (a service unavailable, e.g. a shared
    Postgres out of connections) is tried again, as the next cron run would."""
    env = infra.billq_env(db, prefix, **settings)
    for _ in range(ATTEMPTS):
        with (bench.workdir / f"{prefix}.distribute-retries.log").open("ab") as log:
            proc = subprocess.run(
                infra.billq_cmd("distribute", "--as-of", PRIORITY_AS_OF, "--json"),
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=infra.ROOT,
                timeout=600,
                check=False,
            )
        if proc.returncode == 0:
            json.loads(proc.stdout.decode().strip().splitlines()[-1])  # one summary line
            return
        if proc.returncode != 1:
            break
        time.sleep(1.0)
    raise RuntimeError(f"billq distribute (retries) exited {proc.returncode}")


async def retries_while_bulk_runs(
    bench: Bench, db: str, prefix: str, settings: dict[str, str], n: int
) -> int:
    """Rounds of due dunning retries while the bulk backlog is big; how many were added."""
    added = 0
    conn = await infra.connect(db)
    try:
        while True:
            open_bulk = await conn.fetchval(OPEN_BULK)
            if open_bulk < n * MIN_BULK_OPEN:
                return added
            await seed_due_retries(db, FIRST_ID + added, PER_ROUND)
            added += PER_ROUND
            distribute_retries(bench, db, prefix, settings)
    finally:
        await conn.close()


async def priority_figures(db: str) -> tuple[Any, Any, int]:
    """Latency of the priority jobs, bulk jobs open at their publish, accounts advanced."""
    conn = await infra.connect(db)
    try:
        prio = await conn.fetchrow(FIGURES)
        during = await conn.fetchrow(BULK_OPEN_AT_PUBLISH)
        advanced = await conn.fetchval(
            "SELECT count(*) FROM accounts WHERE id >= $1 AND next_billing_at = $2",
            FIRST_ID,
            PRIORITY_ADVANCED,
        )
    finally:
        await conn.close()
    assert prio is not None and during is not None
    return prio, during, int(advanced)


async def measure(bench: Bench, n: int) -> None:
    from bench.run import measured

    db, prefix = await bench.fresh(n, "priority")
    # The in-process gateway: the row measures the lane, not an HTTP gateway's CPU.
    settings = {"BILLQ_GATEWAY": "inprocess"}
    workers: list[subprocess.Popen[bytes]] = []
    try:
        bench.distribute(db, prefix)
        cpu = infra.CpuMeter(db)
        with infra.RssSampler() as sampler:
            workers = bench.start_workers(db, prefix, 2, **settings)
            for w in workers:
                sampler.watch(w.pid)
            cpu_before = infra.cpu_seconds([w.pid for w in workers])
            cpu.start()
            added = await retries_while_bulk_runs(bench, db, prefix, settings, n)
            await bench.wait_all_succeeded(db, n + added, workers)
            services = cpu.stop()
            services["billq"] = infra.cpu_seconds([w.pid for w in workers]) - cpu_before
        for w in workers:
            infra.stop_process(w)
        workers = []
        figures = await bench.job_figures(db, "started_at")
        prio, during, advanced = await priority_figures(db)
        checks = await bench.check(db, prefix, n + added, advanced_extra=advanced)
        checks["priority_jobs_succeeded"] = prio["n"]
        checks["ok"] = checks["ok"] and prio["n"] == added
        bench.record(
            measured(
                f"priority lane during a {n:,} drain, inprocess, 2 proc x "
                f"{infra.DEFAULT_CONCURRENCY} (default)",
                "priority",
                n + added,
                float(figures["seconds"]),
                sampler.peak_mb(),
                services,
                checks,
                processes=2,
                concurrency=infra.DEFAULT_CONCURRENCY,
                gateway="inprocess",
                mode="priority",
                p50_ms=float(prio["p50"]) * 1000,
                p99_ms=float(prio["p99"]) * 1000,
                extra={
                    "priority_jobs": added,
                    "priority_p99_ms": round(float(prio["p99"]) * 1000),
                    "priority_worst_ms": round(float(prio["worst"]) * 1000),
                    "bulk_open_at_publish_min": during[0],
                    "bulk_open_at_publish_max": during[1],
                },
            )
        )
    finally:
        for w in workers:
            infra.stop_process(w)
        await bench.cleanup(db, prefix)
