"""The priority lane row: how soon a one-off charge is charged while a big bulk run drains.

The bulk run (``n`` due accounts, 50,000 by default) is distributed first; two workers (the
default concurrency, the in-process gateway) drain it. Meanwhile the bench asks for one-off
charges the way an application does — ``POST /v1/charges`` to a ``billq api`` process, each
with its own ``Idempotency-Key`` — one every ``PACE_S``, each on an account of its own that
the run does not bill, until ``SAMPLES`` are in (or the bulk backlog is down to
``MIN_BULK_OPEN``: a later one would not be "during" the run). Nothing more is submitted
once the samples are in; the row then only waits for the bulk run to finish and checks it.

Time-to-charged per one-off is the job's ``created_at`` (the API's create transaction) →
``finished_at`` (the worker's committed charge), both Postgres' clock; the row also says how
many bulk jobs were still open when each one-off was created (proof it was "during" the run).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx

from bench import infra

if TYPE_CHECKING:
    from bench.run import Bench

# The one-off accounts: not due during the run (a one-off never moves an account's period).
ONEOFF_NEXT_AT = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
FIRST_ID = 100_000_000
SAMPLES = 200
PACE_S = 0.1
# Submissions stop once the bulk backlog is this small: later ones would not be "during" it.
MIN_BULK_OPEN = 0.1
PROBE_EVERY = 10
TOKEN = "bench-priority-token"
ATTEMPTS = 5

OPEN_BULK = "SELECT count(*) FROM billing_jobs WHERE kind = 'period' AND state <> 'succeeded'"

ONEOFF_FIGURES = """
SELECT count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM finished_at - created_at)) AS p50,
       percentile_cont(0.99) WITHIN GROUP (
           ORDER BY extract(epoch FROM finished_at - created_at)) AS p99,
       max(extract(epoch FROM finished_at - created_at)) AS worst
  FROM billing_jobs WHERE kind = 'oneoff' AND state = 'succeeded'
"""

# The bulk run alone: its accounts ÷ (last committed charge - first claim).
BULK_FIGURES = """
SELECT count(*) AS n, extract(epoch FROM max(finished_at) - min(started_at)) AS seconds
  FROM billing_jobs WHERE kind = 'period' AND state = 'succeeded'
"""

# For each one-off: the bulk jobs not yet finished when it was created.
BULK_OPEN_AT_CREATE = """
SELECT min(open), max(open) FROM (
  SELECT (SELECT count(*) FROM billing_jobs b
           WHERE b.kind = 'period'
             AND (b.finished_at IS NULL OR b.finished_at > d.created_at)) AS open
    FROM billing_jobs d WHERE d.kind = 'oneoff') per_job
"""

# The one-off accounts charged whose billing period did not move, and any that moved.
UNMOVED = """
SELECT count(*) FILTER (WHERE a.next_billing_at = $2 AND EXISTS (
                 SELECT 1 FROM billing_jobs j WHERE j.account_id = a.id AND j.kind = 'oneoff')),
       count(*) FILTER (WHERE a.next_billing_at <> $2)
  FROM accounts a WHERE a.id >= $1
"""


async def connect(database: str) -> asyncpg.Connection:
    """A connection, waiting while a shared Postgres has no free connection slot."""
    for _ in range(ATTEMPTS * 6):
        try:
            return await infra.connect(database)
        except asyncpg.TooManyConnectionsError:
            await asyncio.sleep(1.0)
    return await infra.connect(database)


async def seed_oneoff_accounts(database: str, count: int) -> None:
    """Active accounts billed from ``ONEOFF_NEXT_AT`` on: nothing of theirs is due."""
    rows = [
        (*row[:7], ONEOFF_NEXT_AT, *row[8:])
        for row in infra.account_rows(FIRST_ID, FIRST_ID + count - 1)
    ]
    conn = await connect(database)
    try:
        await conn.copy_records_to_table("accounts", records=rows, columns=infra.ACCOUNT_COLUMNS)
    finally:
        await conn.close()


def start_api(bench: Bench, db: str, prefix: str) -> tuple[subprocess.Popen[bytes], str]:
    """``billq api`` on a free port; its process and URL."""
    port = infra.free_port()
    proc = infra.spawn(
        infra.billq_cmd("api", "--port", str(port)),
        infra.billq_env(db, prefix, BILLQ_API_TOKENS=TOKEN),
        bench.workdir / f"{prefix}.api.log",
    )
    url = f"http://127.0.0.1:{port}"
    infra.wait_http(f"{url}/healthz", proc)
    return proc, url


async def charge(client: httpx.AsyncClient, i: int, prefix: str) -> None:
    """One one-off, as an application asks for it (a 5xx is retried under the same key)."""
    body = {"account_id": FIRST_ID + i, "amount": 1250, "currency": "USD"}
    headers = {"Idempotency-Key": f"{prefix}-oneoff-{i}"}
    for _ in range(ATTEMPTS):
        resp = await client.post("/v1/charges", json=body, headers=headers)
        if resp.status_code in (200, 201):
            return
        if resp.status_code < 500:
            break
        await asyncio.sleep(0.5)
    raise RuntimeError(f"POST /v1/charges answered {resp.status_code}: {resp.text[:300]}")


async def oneoffs_while_bulk_runs(url: str, db: str, prefix: str, n: int) -> int:
    """One-off charges, one every ``PACE_S``, until the samples are in; how many were sent."""
    conn = await connect(db)
    try:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as client:
            for i in range(SAMPLES):
                # A count over the run's jobs: asked now and then, not before every charge,
                # so the bench's own probe does not load the database it measures.
                if i % PROBE_EVERY == 0 and await conn.fetchval(OPEN_BULK) < n * MIN_BULK_OPEN:
                    return i
                await charge(client, i, prefix)
                await asyncio.sleep(PACE_S)
    finally:
        await conn.close()
    return SAMPLES


async def priority_figures(db: str) -> dict[str, Any]:
    """One-off latency, the bulk run's own rate, bulk jobs open at each one-off's create,
    and the one-off accounts whose period did not move."""
    conn = await connect(db)
    try:
        oneoff = await conn.fetchrow(ONEOFF_FIGURES)
        bulk = await conn.fetchrow(BULK_FIGURES)
        during = await conn.fetchrow(BULK_OPEN_AT_CREATE)
        periods = await conn.fetchrow(UNMOVED, FIRST_ID, ONEOFF_NEXT_AT)
    finally:
        await conn.close()
    assert oneoff is not None and bulk is not None and during is not None and periods
    return {
        "oneoff": oneoff,
        "bulk": bulk,
        "during": during,
        "unmoved": periods[0],
        "moved": periods[1],
    }


async def measure(bench: Bench, n: int) -> None:
    from bench.run import measured

    db, prefix = await bench.fresh(n, "priority")
    await seed_oneoff_accounts(db, SAMPLES)
    # The in-process gateway: the row measures the lane, not an HTTP gateway's CPU.
    settings = {"BILLQ_GATEWAY": "inprocess"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        bench.distribute(db, prefix)
        api, url = start_api(bench, db, prefix)
        procs.append(api)
        cpu = infra.CpuMeter(db)
        load_before = infra.loadavg()
        with infra.RssSampler() as sampler:
            workers = bench.start_workers(db, prefix, 2, **settings)
            procs += workers
            for w in workers:
                sampler.watch(w.pid)
            cpu_before = infra.cpu_seconds([w.pid for w in workers])
            cpu.start()
            sent = await oneoffs_while_bulk_runs(url, db, prefix, n)
            await bench.wait_all_succeeded(db, n + sent, workers)
            services = cpu.stop()
            services["billq"] = infra.cpu_seconds([w.pid for w in workers]) - cpu_before
        load_after = infra.loadavg()
        for p in procs:
            infra.stop_process(p)
        procs = []
        f = await priority_figures(db)
        oneoff, bulk, during = f["oneoff"], f["bulk"], f["during"]
        # A one-off never advances its account: those accounts are the ones not advanced.
        checks = await bench.check(db, prefix, n + sent, advanced_extra=f["unmoved"])
        checks["oneoff_charged"] = oneoff["n"]
        checks["oneoff_accounts_moved"] = f["moved"]
        checks["ok"] = (
            checks["ok"] and sent > 0 and oneoff["n"] == sent == f["unmoved"] and not f["moved"]
        )
        bench.record(
            measured(
                f"priority lane: one-offs over HTTP during a {n:,} drain, inprocess, 2 proc x "
                f"{infra.DEFAULT_CONCURRENCY} (default)",
                "priority",
                n,
                float(bulk["seconds"]),
                sampler.peak_mb(),
                services,
                checks,
                processes=2,
                concurrency=infra.DEFAULT_CONCURRENCY,
                gateway="inprocess",
                mode="priority",
                p50_ms=float(oneoff["p50"]) * 1000 if sent else None,
                p99_ms=float(oneoff["p99"]) * 1000 if sent else None,
                extra={
                    "oneoff_samples": sent,
                    "oneoff_p50_ms": round(float(oneoff["p50"] or 0) * 1000),
                    "oneoff_p99_ms": round(float(oneoff["p99"] or 0) * 1000),
                    "oneoff_worst_ms": round(float(oneoff["worst"] or 0) * 1000),
                    "bulk_open_at_create_min": during[0],
                    "bulk_open_at_create_max": during[1],
                    "load_avg_1m_before": load_before,
                    "load_avg_1m_after": load_after,
                },
            )
        )
    finally:
        for p in procs:
            infra.stop_process(p)
        await bench.cleanup(db, prefix)
