"""The ``dashboard`` row: how fast each page and API call answers with a 1,000,000-job run in
the database (the dashboard's target: < 200 ms per page).

The run is seeded with SQL (generate_series), not by billing it: 1,000,000 first attempts
(succeeded with their charges, declined, dead, already paid, 1 % still open), then a
dunning run retrying the declines. billq's own triggers see these inserts like any other,
so the summaries the pages read are the ones a real run leaves; invoices, one-off charges
and refunds are seeded beside them. Then ``billq dashboard`` is started as a process, once
per page: the first request after start (its caches empty) is the cold figure, the next
ones (answered partly from its per-second cache) the warm. Every page is measured twice:
first on the database as seeded, which was never analyzed (Postgres has no statistics for
it, as with autovacuum off), then after ANALYZE. Each pass also walks the keyset pages of
a few job lists to their end, following each page's "older" link.
"""

from __future__ import annotations

import asyncio
import html
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench import infra

AS_OF = "2026-03-01T12:00:00Z"

# One job per account; i % 1000 decides its fate (percentages of the run).
FATE = """CASE WHEN i % 1000 < 10 THEN 'published'
            WHEN i % 1000 < 40 THEN 'failed'
            WHEN i % 1000 < 50 THEN 'dead'
            WHEN i % 1000 < 52 THEN 'already_paid'
            ELSE 'succeeded' END"""

SEED = [
    f"""
INSERT INTO accounts (id, name, email, amount_cents, currency, billing_interval,
                      billing_anchor_day, next_billing_at, status, payment_method,
                      gateway_customer)
SELECT i, 'Bench ' || i, 'bench' || i || '@example.com', 900 + (i % 50) * 100,
       CASE WHEN i % 7 = 0 THEN 'EUR' ELSE 'USD' END, 'month', 1,
       CASE WHEN {FATE} IN ('succeeded', 'already_paid') THEN timestamptz '2026-04-01'
            ELSE timestamptz '2026-03-01' END,
       CASE WHEN {FATE} = 'failed' THEN CASE WHEN i % 3 = 0 THEN 'suspended' ELSE 'past_due' END
            ELSE 'active' END,
       'pm_card_visa', 'cus_' || i
  FROM generate_series(1, $1) i
""",
    f"""
INSERT INTO billing_runs (id, as_of, state, due, published, started_at)
VALUES (1, '{AS_OF}', 'published', $1, $1, now() - interval '40 minutes'),
       (2, '2026-03-04T12:00:00Z', 'completed_with_failures', $1 * 3 / 100, $1 * 3 / 100,
        now() - interval '20 minutes')
""",
    "SELECT setval('billing_runs_id_seq', 2)",
    # First attempts: finished over the last 30 minutes, in id order.
    f"""
INSERT INTO billing_jobs (run_id, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, state, attempts, last_error, decline_code,
                          created_at, published_at, started_at, finished_at, updated_at,
                          payment_method, gateway_customer)
SELECT 1, i, date '2026-03-01', date '2026-04-01', 'billq_' || i || '_2026-03-01',
       900 + (i % 50) * 100, CASE WHEN i % 7 = 0 THEN 'EUR' ELSE 'USD' END, f.state,
       CASE WHEN f.state = 'published' THEN 0 ELSE 1 END,
       CASE f.state WHEN 'failed' THEN 'card_declined'
                    WHEN 'dead' THEN 'AccountNotBillable: account is cancelled'
                    WHEN 'already_paid' THEN 'period already paid' END,
       CASE WHEN f.state = 'failed' THEN (ARRAY['insufficient_funds', 'expired_card',
                                                'stolen_card', 'do_not_honor'])[1 + i % 4] END,
       t.at - interval '2 minutes', t.at - interval '1 minute', t.at - interval '1 second',
       CASE WHEN f.state = 'published' THEN NULL ELSE t.at END, t.at,
       'pm_card_visa', 'cus_' || i
  FROM generate_series(1, $1) i
  CROSS JOIN LATERAL (SELECT {FATE} AS state) f
  CROSS JOIN LATERAL (SELECT now() - interval '30 minutes'
                             + (i::float8 / $1) * interval '29 minutes' AS at) t
""",
    # Dunning retries of the declines (run 2): two in three recover.
    """
INSERT INTO billing_jobs (run_id, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, state, attempts, last_error, decline_code,
                          dunning_attempt, created_at, published_at, started_at, finished_at,
                          updated_at, payment_method, gateway_customer)
SELECT 2, j.account_id, j.period_start, j.period_end, j.idempotency_key || '_d1',
       j.amount_cents, j.currency, CASE WHEN j.id % 3 = 0 THEN 'failed' ELSE 'succeeded' END,
       1, CASE WHEN j.id % 3 = 0 THEN 'card_declined' END,
       CASE WHEN j.id % 3 = 0 THEN j.decline_code END, 1,
       now() - interval '15 minutes', now() - interval '15 minutes',
       now() - interval '14 minutes', now() - interval '14 minutes',
       now() - interval '14 minutes', j.payment_method, j.gateway_customer
  FROM billing_jobs j WHERE j.run_id = 1 AND j.state = 'failed'
""",
    """
INSERT INTO charges (job_id, account_id, period_start, period_end, amount_cents, currency,
                     idempotency_key, gateway_charge_id, created_at)
SELECT id, account_id, period_start, period_end, amount_cents, currency, idempotency_key,
       'pi_' || id, finished_at
  FROM billing_jobs WHERE state = 'succeeded'
""",
    # Every first attempt that was charged or declined has its invoice, as the record steps
    # leave them: the invoices table is as big as the run.
    """
INSERT INTO invoices (number, account_id, period_start, period_end, amount_cents, currency,
                      status, gateway_charge_id, job_id, paid_at)
SELECT '2026-' || lpad(j.id::text, 7, '0'), j.account_id, j.period_start, j.period_end,
       j.amount_cents, j.currency, CASE WHEN j.state = 'succeeded' THEN 'paid' ELSE 'open' END,
       CASE WHEN j.state = 'succeeded' THEN 'pi_' || j.id END, j.id,
       CASE WHEN j.state = 'succeeded' THEN j.finished_at END
  FROM billing_jobs j WHERE j.run_id = 1 AND j.state IN ('succeeded', 'failed')
""",
    """
INSERT INTO account_events (account_id, at, kind, from_status, to_status, reason, job_id)
SELECT j.account_id, j.finished_at, 'declined', 'active', 'past_due', j.decline_code, j.id
  FROM billing_jobs j WHERE j.state = 'failed' AND j.dunning_attempt = 0
""",
    # One-off charges an application asked for (no run; 1 % of the accounts, account 20
    # among them), each charged and invoiced under its own kind.
    """
INSERT INTO billing_jobs (kind, run_id, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, state, attempts, created_at, published_at,
                          started_at, finished_at, updated_at, payment_method, gateway_customer,
                          description)
SELECT 'oneoff', NULL, i, date '2026-02-10', date '2026-02-11', 'billq_' || i || '_oneoff_bench',
       500, CASE WHEN i % 7 = 0 THEN 'EUR' ELSE 'USD' END, 'succeeded', 1,
       now() - interval '50 minutes', now() - interval '50 minutes',
       now() - interval '50 minutes', now() - interval '50 minutes',
       now() - interval '50 minutes', 'pm_card_visa', 'cus_' || i, 'setup fee'
  FROM generate_series(20, $1, 100) i
""",
    """
INSERT INTO charges (job_id, kind, account_id, period_start, period_end, amount_cents, currency,
                     idempotency_key, gateway_charge_id, created_at)
SELECT id, kind, account_id, period_start, period_end, amount_cents, currency, idempotency_key,
       'pi_' || id, finished_at
  FROM billing_jobs WHERE kind = 'oneoff'
""",
    """
INSERT INTO invoices (number, kind, description, account_id, period_start, period_end,
                      amount_cents, currency, status, gateway_charge_id, job_id, paid_at)
SELECT '2026-O' || lpad(j.id::text, 7, '0'), j.kind, j.description, j.account_id,
       j.period_start, j.period_end, j.amount_cents, j.currency, 'paid', 'pi_' || j.id, j.id,
       j.finished_at
  FROM billing_jobs j WHERE j.kind = 'oneoff'
""",
    # Refunds of 0.1 % of the period charges (and of account 20's), each a refund job.
    """
INSERT INTO billing_jobs (kind, run_id, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, state, attempts, created_at, published_at,
                          started_at, finished_at, updated_at, refund_of, description)
SELECT 'refund', NULL, c.account_id, c.period_start, c.period_end,
       'billq_refund_' || c.id || '_1', 100, c.currency, 'succeeded', 1,
       now() - interval '5 minutes', now() - interval '5 minutes', now() - interval '5 minutes',
       now() - interval '5 minutes', now() - interval '5 minutes', c.id, 'goodwill'
  FROM charges c WHERE c.kind = 'period' AND (c.account_id % 1000 = 100 OR c.account_id = 20)
""",
    """
INSERT INTO refunds (job_id, charge_id, account_id, amount_cents, currency, gateway_refund_id,
                     idempotency_key, created_at)
SELECT id, refund_of, account_id, amount_cents, currency, 're_' || id, idempotency_key,
       finished_at
  FROM billing_jobs WHERE kind = 'refund'
""",
    """
UPDATE charges c SET refunded_cents = r.amount_cents FROM refunds r WHERE r.charge_id = c.id
""",
]

# Postgres' autovacuum may be off (it is on some of our machines): a database that was
# never analyzed is measured first, then again after ANALYZE.
ANALYZE = "ANALYZE"

# Each page and API call (with a job-heavy run, a declined account, an open queue).
PAGES = [
    "/",
    "/runs/1",
    "/runs/2",
    "/live/overview",
    "/live/runs/1",
    "/jobs",
    "/jobs?run=1",
    "/jobs?run=1&state=failed",
    "/jobs?run=1&state=dead",
    "/jobs?run=2&state=dead",
    "/jobs?state=published",
    "/jobs?state=failed",
    "/jobs?state=dead",
    "/jobs?state=already_paid",
    "/jobs?state=succeeded",
    "/jobs?account=20",
    "/jobs?account=20&state=succeeded",
    "/accounts/20",
    "/dlq",
    "/workers",
    "/metrics",
    "/api/status",
    "/api/runs",
    "/api/runs/1",
    "/api/report/2",
    "/api/queues",
    "/api/dlq",
    "/api/jobs?run=1&state=failed",
    "/api/jobs?run=1",
    "/api/jobs?account=20",
    "/api/accounts/20",
    "/api/workers",
    "/api/scale-hint?deadline=2026-03-01T18:00:00Z",
]

# Job lists walked page after page to the end (the first page is the cold figure).
WALKS = ["/jobs?run=1&limit=1000", "/jobs?run=2", "/jobs?state=failed&limit=1000"]
OLDER = re.compile(r'id="older" href="([^"]+)"')
PASSES = ("no stats", "analyzed")

TARGET_MS = 200.0
ROUNDS = 3  # dashboard starts per page: cold figures
WARM = 10  # requests after the first, per start


async def seed(database: str, n: int) -> float:
    started = time.perf_counter()
    conn = await infra.connect(database)
    try:
        for sql in SEED:
            await (conn.execute(sql, n) if "$1" in sql else conn.execute(sql))
    finally:
        await conn.close()
    return time.perf_counter() - started


async def analyze(database: str) -> None:
    conn = await infra.connect(database)
    try:
        await conn.execute(ANALYZE)
    finally:
        await conn.close()


def start(database: str, prefix: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A started dashboard and its URL; a start that fails (a shared server out of
    connections) is tried again, up to five times."""
    for attempt in range(6):
        port = infra.free_port()
        proc = infra.spawn(
            infra.billq_cmd("dashboard", "--port", str(port), "--read-only"),
            infra.billq_env(database, prefix),
            log,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            infra.wait_http(f"{base}/healthz", proc, timeout=60)
            return proc, base
        except RuntimeError:
            infra.stop_process(proc)
            if attempt == 5:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


def timed_get(client: httpx.Client, url: str) -> float:
    t0 = time.perf_counter()
    response = client.get(url)
    took = (time.perf_counter() - t0) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
    return took


def timed_walk(client: httpx.Client, url: str) -> list[float]:
    """ms per page of a job list, from ``url`` through each page's "older" link to the last."""
    took: list[float] = []
    next_url: str | None = url
    while next_url is not None:
        t0 = time.perf_counter()
        response = client.get(next_url)
        took.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {next_url}: {response.status_code}")
        found = OLDER.search(response.text)
        next_url = html.unescape(found.group(1)) if found else None
    return took


def figures(cold: list[float], warm: list[float]) -> dict[str, Any]:
    return {
        "cold_p50_ms": round(statistics.median(cold), 1),
        "cold_max_ms": round(max(cold), 1),
        "warm_p50_ms": round(statistics.median(warm), 1) if warm else 0.0,
        "warm_max_ms": round(max(warm), 1) if warm else 0.0,
    }


def measure_pass(database: str, prefix: str, log: Path, label: str) -> dict[str, dict[str, Any]]:
    """Per page: cold (first request after a dashboard start) and warm p50 / max in ms; per
    walk: its first page (cold) and the pages after it (warm), and how many."""
    cold: dict[str, list[float]] = {p: [] for p in PAGES}
    warm: dict[str, list[float]] = {p: [] for p in PAGES}
    for _ in range(ROUNDS):
        for page in PAGES:
            proc, base = start(database, prefix, log)
            try:
                with httpx.Client(base_url=base, timeout=60) as client:
                    cold[page].append(timed_get(client, page))
                    warm[page].extend(timed_get(client, page) for _ in range(WARM))
            finally:
                infra.stop_process(proc)
    out = {f"{label} {page}": figures(cold[page], warm[page]) for page in PAGES}
    for walk in WALKS:
        proc, base = start(database, prefix, log)
        try:
            with httpx.Client(base_url=base, timeout=60) as client:
                took = timed_walk(client, walk)
        finally:
            infra.stop_process(proc)
        out[f"{label} walk {walk} ({len(took)} pages)"] = figures(took[:1], took[1:])
    return out


def measure(database: str, prefix: str, workdir: Path) -> dict[str, dict[str, Any]]:
    """Every page and walk, before and after ANALYZE (rows keyed "no stats /page", ...)."""
    log = workdir / f"{prefix}.dashboard.log"
    subprocess.run(  # the queues the dlq and queue pages read
        infra.billq_cmd("topology"),
        env=infra.billq_env(database, prefix),
        cwd=infra.ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    out = measure_pass(database, prefix, log, PASSES[0])
    print_pages(out, None)  # the first pass at once: a later failure keeps it on record
    asyncio.run(analyze(database))  # measure runs in a thread of its own: a loop of its own
    return out | measure_pass(database, prefix, log, PASSES[1])


def print_pages(pages: dict[str, dict[str, Any]], jobs: int | None) -> None:
    run = f"{jobs:,}-job run" if jobs is not None else "first pass"
    print(f"\ndashboard, {run}: ms per request (target < {TARGET_MS:.0f})", flush=True)
    head = (
        f"{'statistics':<10} {'page':<52} {'cold p50':>9} {'cold max':>9}"
        f" {'warm p50':>9} {'warm max':>9}"
    )
    print(head)
    print("-" * len(head))
    for key, f in pages.items():
        label = next((p for p in PASSES if key.startswith(p + " ")), "")
        page = key[len(label) :].strip()
        slow = " *" if max(f["cold_max_ms"], f["warm_max_ms"]) >= TARGET_MS else ""
        print(
            f"{label:<10} {page:<52} {f['cold_p50_ms']:>9.1f} {f['cold_max_ms']:>9.1f}"
            f" {f['warm_p50_ms']:>9.1f} {f['warm_max_ms']:>9.1f}{slow}"
        )
