"""`make soak`: one long pipeline run, watched for leaks.

A billing run of ``--n`` accounts (default 1,000,000): ``billq distribute`` while worker
processes charge through the HTTP sandbox gateway with injected faults (5xx, timeouts of
calls that did charge, latency spikes), and ``billq reconcile`` every minute as cron would.
Every ``--interval`` seconds it samples each billq process's RSS, open file descriptors and
TCP connections, and Postgres's dead tuples. At the end: table sizes, dead tuples and bloat
(``pgstattuple_approx`` when the extension is available), and the money checks (one charge
per account here and in the gateway's ledger).

Like the rest of the bench it drives billq through its CLI only. The time series and the
summary go to ``bench/results/soak.json``; nothing is asserted on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench import infra

RESULTS = infra.ROOT / "bench" / "results" / "soak.json"
TABLES = ("accounts", "billing_jobs", "charges", "invoices", "billing_runs")
# Faults: transient 5xx, calls that charge and never answer, answers slower than the client's
# timeout (also calls that charged). Retries are short so the run ends in minutes.
GATEWAY_FAULTS = (
    *("--fail-rate", "0.02", "--timeout-rate", "0.005", "--latency-ms", "5"),
    *("--spike-rate", "0.005", "--spike-ms", "2500", "--seed", "15"),
)
WORKER_SETTINGS = {
    "BILLQ_GATEWAY": "sandbox",
    "BILLQ_GATEWAY_TIMEOUT": "2",
    "BILLQ_RETRY_DELAYS": "[1, 3, 10]",
    "BILLQ_MAX_ATTEMPTS": "25",
    "BILLQ_LOG_LEVEL": "warning",  # a million info lines measure the disk, not billq
}


@dataclass
class Watched:
    role: str
    proc: subprocess.Popen[bytes]

    def sample(self) -> dict[str, Any] | None:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(self.proc.pid)
            return {
                "rss_mb": round(p.memory_info().rss / 1e6, 1),
                "fds": p.num_fds(),
                "tcp": len(p.net_connections(kind="tcp")),
            }
        return None


async def _progress(db: str) -> dict[str, int]:
    conn = await infra.connect(db)
    try:
        jobs = await conn.fetchrow(
            "SELECT count(*) AS jobs,"
            " count(*) FILTER (WHERE state IN ('succeeded','failed','dead')) AS finished"
            " FROM billing_jobs"
        )
        dead = await conn.fetchval(
            "SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables"
            " WHERE relname = ANY($1::text[])",
            list(TABLES),
        )
        assert jobs is not None
        return {"jobs": jobs["jobs"], "finished": jobs["finished"], "pg_dead_tuples": int(dead)}
    finally:
        await conn.close()


async def _autovacuum_on(db: str) -> bool:
    conn = await infra.connect(db)
    try:
        return bool(await conn.fetchval("SELECT current_setting('autovacuum') = 'on'"))
    finally:
        await conn.close()


async def _analyze(db: str) -> None:
    """What autovacuum's auto-analyze does for a run that grows from nothing: statistics.
    Without them every plan over the new rows is a guess (Postgres' own default is on)."""
    conn = await infra.connect(db)
    try:
        await conn.execute("ANALYZE " + ", ".join(TABLES))
    finally:
        await conn.close()


async def _tables(db: str) -> dict[str, dict[str, Any]]:
    """Per table: live and dead tuples, autovacuum runs, size; bloat if pgstattuple exists."""
    conn = await infra.connect(db)
    try:
        bloat_ok = False
        with contextlib.suppress(Exception):
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
            bloat_ok = True
        out: dict[str, dict[str, Any]] = {}
        for table in TABLES:
            row = await conn.fetchrow(
                "SELECT n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count,"
                " pg_total_relation_size(relid) AS total_bytes,"
                " pg_relation_size(relid) AS heap_bytes"
                " FROM pg_stat_user_tables WHERE relname = $1",
                table,
            )
            if row is None:
                continue
            out[table] = dict(row)
            if bloat_ok:
                approx = await conn.fetchrow(
                    "SELECT dead_tuple_percent, approx_free_percent"
                    " FROM pgstattuple_approx($1::regclass)",
                    table,
                )
                if approx is not None:
                    out[table].update(
                        dead_tuple_pct=round(float(approx["dead_tuple_percent"]), 1),
                        free_space_pct=round(float(approx["approx_free_percent"]), 1),
                    )
        return out
    finally:
        await conn.close()


async def _money(db: str, prefix: str, n: int, ledger: Path) -> dict[str, Any]:
    conn = await infra.connect(db)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS charges, count(DISTINCT account_id) AS accounts FROM charges"
        )
        not_done = await conn.fetchval(
            "SELECT count(*) FROM billing_jobs WHERE state <> 'succeeded'"
        )
    finally:
        await conn.close()
    assert row is not None
    total, keys, succeeded = infra.ledger_counts(ledger)
    checks = {
        "charges": row["charges"],
        "accounts_charged": row["accounts"],
        "jobs_not_succeeded": not_done,
        "queue_messages_left": sum((await infra.queue_depths(prefix)).values()),
        "gateway_intents": total,
        "gateway_keys": keys,
        "gateway_succeeded": succeeded,
    }
    checks["ok"] = (
        row["charges"] == row["accounts"] == succeeded == keys == n
        and not_done == 0
        and checks["queue_messages_left"] == 0
    )
    return checks


def _trend(samples: list[dict[str, Any]], role: str, key: str) -> dict[str, float]:
    """One process role's series: the first value after warm-up (10 % of its samples, at
    least the one taken as it started), peak, last, and the medians of the first and last
    quarter after warm-up, whose difference (``quarter_growth``) says whether it is flat."""
    series = [s[role][key] for s in samples if s.get(role)]
    if not series:
        return {}
    warmed = series[max(1, len(series) // 10) :] or series[-1:]
    warm = warmed[0]
    quarter = max(1, len(warmed) // 4)
    first, last = statistics.median(warmed[:quarter]), statistics.median(warmed[-quarter:])
    return {
        "after_warmup": warm,
        "peak": max(series),
        "last": series[-1],
        "first_quarter": first,
        "last_quarter": last,
        "quarter_growth": round(last - first, 1),
    }


def _start(
    args: argparse.Namespace, db: str, prefix: str, workdir: Path, ledger: Path
) -> tuple[list[Watched], dict[str, str]]:
    """The gateway and the workers, ready; returns them and the workers' environment."""
    port = infra.free_port()
    gateway = infra.spawn(
        infra.billq_cmd(
            "sandbox-gateway", "--port", str(port), "--ledger", str(ledger), *GATEWAY_FAULTS
        ),
        infra.billq_env(db, prefix),
        workdir / "gateway.log",
    )
    procs = [Watched("gateway", gateway)]
    url = f"http://127.0.0.1:{port}"
    infra.wait_http(f"{url}/healthz", gateway)
    env = infra.billq_env(db, prefix, BILLQ_GATEWAY_URL=url, **WORKER_SETTINGS)
    for i in range(args.workers):
        metrics = infra.free_port()
        worker = infra.spawn(
            infra.billq_cmd(
                "worker", "--concurrency", str(args.concurrency), "--metrics-port", str(metrics)
            ),
            env,
            workdir / f"worker{i}.log",
        )
        procs.append(Watched(f"worker{i}", worker))
        infra.wait_http(f"http://127.0.0.1:{metrics}/readyz", worker, timeout=60)
    return procs, env


async def _watch(
    args: argparse.Namespace, db: str, prefix: str, procs: list[Watched], env: dict[str, str]
) -> list[dict[str, Any]]:
    """Sample until every job is finished and every queue empty; reconcile every minute, and
    ANALYZE every minute when the server's autovacuum is off (it stands in for it)."""
    run_started = last_reconcile = time.monotonic()
    stand_in = not await _autovacuum_on(db)
    distributor = next(w.proc for w in procs if w.role == "distributor")
    samples: list[dict[str, Any]] = []
    while True:
        sample: dict[str, Any] = {"t_s": round(time.monotonic() - run_started, 1)}
        for w in procs:
            if w.proc.poll() is None and (s := w.sample()) is not None:
                sample[w.role] = s
        try:
            sample.update(await _progress(db))
        except (OSError, asyncpg.PostgresError) as exc:
            # The database server may be shared ("too many clients"): a sample it could not
            # give is skipped; one failed look must not end an hour-long run.
            print(f"  t={sample['t_s']:>6.0f}s sample skipped: {type(exc).__name__}", flush=True)
            await asyncio.sleep(args.interval)
            continue
        samples.append(sample)
        print(
            f"  t={sample['t_s']:>6.0f}s finished {sample['finished']:>9,}/{args.n:,} "
            + " ".join(
                f"{w.role}={sample[w.role]['rss_mb']:.0f}MB/{sample[w.role]['fds']}fd"
                for w in procs
                if w.role in sample
            ),
            flush=True,
        )
        if distributor.poll() not in (None, 0):
            raise RuntimeError(f"billq distribute exited {distributor.returncode}")
        if any(w.proc.poll() is not None for w in procs if w.role.startswith("worker")):
            raise RuntimeError("a worker exited")
        if args.max_minutes and time.monotonic() - run_started > args.max_minutes * 60:
            print(f"soak: stopped after {args.max_minutes} min (--max-minutes), run unfinished")
            return samples
        if (
            sample["finished"] >= args.n
            and distributor.poll() == 0
            and not any((await infra.queue_depths(prefix)).values())
        ):
            return samples
        if time.monotonic() - last_reconcile > 60:
            await asyncio.to_thread(
                subprocess.run,
                infra.billq_cmd("reconcile"),
                env=env,
                cwd=infra.ROOT,
                capture_output=True,
                check=False,
            )
            if stand_in:
                with contextlib.suppress(OSError, asyncpg.PostgresError):
                    await _analyze(db)
            last_reconcile = time.monotonic()
        await asyncio.sleep(args.interval)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="billq-soak-"))
    db, prefix = infra.unique("billq_soak"), infra.unique("soak")
    ledger = workdir / "ledger.sqlite3"
    procs: list[Watched] = []
    started = time.monotonic()
    try:
        infra.migrate(db, workdir)
        seeded_s = await infra.seed(db, args.n)
        print(f"soak: {args.n:,} accounts seeded in {seeded_s:.0f}s; logs in {workdir}")
        procs, env = _start(args, db, prefix, workdir, ledger)
        run_started = time.monotonic()
        distributor = infra.spawn(
            infra.billq_cmd("distribute", "--as-of", infra.AS_OF), env, workdir / "distribute.log"
        )
        procs.append(Watched("distributor", distributor))
        samples = await _watch(args, db, prefix, procs, env)
        run_s = time.monotonic() - run_started
        for w in reversed(procs):  # the gateway last: its ledger is read afterwards
            infra.stop_process(w.proc)
        roles = [w.role for w in procs]  # the sandbox gateway too: it keeps its ledger in memory
        return {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": infra.machine_facts(),
            "services": await infra.server_versions(),
            "accounts": args.n,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "gateway_faults": " ".join(GATEWAY_FAULTS),
            "autovacuum": (
                "on"
                if await _autovacuum_on(db)
                else "off on this server: the soak ran ANALYZE every minute in its place"
            ),
            "settings": WORKER_SETTINGS,
            "seed_s": round(seeded_s, 1),
            "run_s": round(run_s, 1),
            "accounts_per_s": round(samples[-1]["finished"] / run_s, 1),
            "trends": {
                role: {key: _trend(samples, role, key) for key in ("rss_mb", "fds", "tcp")}
                for role in roles
            },
            "finished": samples[-1]["finished"],
            "postgres_tables": await _tables(db),
            # An unfinished run has nothing to count yet: no verdict rather than a false one.
            "checks": (
                await _money(db, prefix, args.n, ledger)
                if samples[-1]["finished"] >= args.n
                else {"ok": None}
            ),
            "samples": samples,
        }
    finally:
        for w in procs:
            infra.stop_process(w.proc, timeout=10)
        if not args.keep:
            await infra.drop_database(db)
            await infra.delete_topology(prefix)
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"soak: {time.monotonic() - started:.0f}s in all")


def print_summary(result: dict[str, Any]) -> None:
    print(
        f"\nsoak: {result['finished']:,} of {result['accounts']:,} accounts in "
        f"{result['run_s']:.0f}s ({result['accounts_per_s']:,.0f}/s), {result['workers']} "
        f"workers x {result['concurrency']}, checks "
        + {True: "ok", False: "FAILED", None: "not run (unfinished)"}[result["checks"]["ok"]]
        + f"; autovacuum {result['autovacuum']}"
    )
    for role, trend in result["trends"].items():
        line = "  ".join(
            f"{key} {t['first_quarter']:g} -> {t['last_quarter']:g} (quarters; peak {t['peak']:g})"
            for key, t in trend.items()
            if t
        )
        print(f"  {role:<12} {line}")
    for table, t in result["postgres_tables"].items():
        bloat = (
            f" dead {t['dead_tuple_pct']}% free {t['free_space_pct']}%"
            if "dead_tuple_pct" in t
            else ""
        )
        print(
            f"  {table:<13} live {t['n_live_tup']:>9,} dead {t['n_dead_tup']:>8,} "
            f"autovacuums {t['autovacuum_count']} size {t['total_bytes'] / 1e6:,.0f} MB{bloat}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="accounts (default 1,000,000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=256, help="per worker")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--max-minutes", type=float, default=0, help="stop watching after this long (0: never)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database, queues and logs")
    args = parser.parse_args()
    result = asyncio.run(soak(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print_summary(result)
    print(f"results: {RESULTS.relative_to(infra.ROOT)}")
    raise SystemExit(0 if result["checks"]["ok"] is not False else 1)


if __name__ == "__main__":
    main()
