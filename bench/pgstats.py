"""``python -m bench.pgstats``: what Postgres itself counts for the distributor and the pipeline.

The machine's Postgres does not preload ``pg_stat_statements`` (and is never reconfigured by
the bench), so this starts a throwaway cluster of the same major version on a free port with
``shared_preload_libraries = pg_stat_statements`` and ``pg_stat_statements.track = all``, and
with the machine's server's ``synchronous_commit``, ``shared_buffers``, ``max_connections``
(at least 100) and the other settings in ``MIRRORED`` (read with ``SHOW``; ``--setting
NAME=VALUE`` overrides one, e.g. ``autovacuum=on``). Then it runs two of the bench's loads
against it (``BENCH_PG_ADMIN`` pointed there; the broker is the usual):

- ``distributor``: ``billq distribute`` alone against ``--n`` due accounts;
- ``pipeline-default``: the same while 2 workers with the default settings consume
  (in-process gateway), as the bench's ``pipeline-default`` row.

Before each load the statement counters are reset (the load's database is a fresh clone, so
its table counters start at zero). After it: the top statements by total execution time
(calls, rows, total / mean ms, µs and calls per account, shared blocks hit / read, WAL bytes)
and, per table, rows inserted / updated / HOT-updated / deleted, dead and live rows and
autovacuum runs. The bench's own polling is left out (``/* bench */`` statements).
Printed and written to ``bench/results/pgstats/<--label or latest>.json``. The cluster is
stopped and deleted at the end, on error and on Ctrl-C / SIGTERM too.

``--tree DIR`` (repeatable) measures other checkouts of billq (each with its own
``make install``) with this bench, each load on each tree in turn on the same throwaway
server: the A/B of a change, old tree against new (``--tree OLD --tree .``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import itertools
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg
import psutil

from bench import infra, run

RESULTS = run.RESULTS / "pgstats"
# Settings copied from the machine's server so that the throwaway one behaves like it.
MIRRORED = (
    "synchronous_commit",
    "fsync",
    "full_page_writes",
    "shared_buffers",
    "work_mem",
    "maintenance_work_mem",
    "effective_cache_size",
    "wal_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "random_page_cost",
    "autovacuum",
    "jit",
)
TOP = 15
LOADS = ("distributor", "pipeline-default")


def bindir(major: str) -> Path:
    """Where this Postgres major version's server binaries are: pg_config's, or Debian's."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        got = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(got.stdout.strip()))
    candidates += [Path(f"/usr/lib/postgresql/{major}/bin")]
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for c in candidates:
        version = c / "postgres"
        if (c / "initdb").exists() and version.exists():
            out = subprocess.run(
                [version, "--version"], capture_output=True, text=True, check=False
            )
            if f" {major}." in out.stdout:
                return c
    raise SystemExit(f"pgstats: no Postgres {major} server binaries (initdb) found")


async def machine_settings() -> tuple[str, dict[str, str]]:
    """The machine's server: its major version and the settings to mirror."""
    conn = await asyncpg.connect(infra.PG_ADMIN)
    try:
        major = str(await conn.fetchval("SHOW server_version_num"))[:-4]
        got = {name: str(await conn.fetchval(f"SHOW {name}")) for name in MIRRORED}
        got["max_connections"] = str(max(100, int(await conn.fetchval("SHOW max_connections"))))
    finally:
        await conn.close()
    return major, got


class Cluster:
    """initdb + pg_ctl in a temp directory; as the ``postgres`` OS user when run as root."""

    def __init__(self, bins: Path, settings: dict[str, str]) -> None:
        self.bins = bins
        self.settings = settings
        self.root = Path(tempfile.mkdtemp(prefix="billq-pgstats-"))
        self.data = self.root / "data"
        self.port = infra.free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.started = False

    def _run(self, *args: str) -> None:
        cmd = [str(self.bins / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} exited {proc.returncode}: {proc.stderr[-2000:]}")

    @property
    def admin_url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user)
        options = {
            **self.settings,
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
            "pg_stat_statements.max": "10000",
        }
        conf = "".join(f"{k} = '{v}'\n" for k, v in options.items())
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n# bench.pgstats\n" + conf)
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "log"), "start")
        self.started = True

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(RuntimeError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def stopped_on_signals() -> Iterator[None]:
    """SIGTERM / SIGHUP end the run like Ctrl-C does, so the cluster is always removed."""

    def leave(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell starts a background job with SIGINT ignored.
    previous = {s: signal.signal(s, leave) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


STATEMENTS = """/* bench */
SELECT s.query, s.calls, s.rows, s.total_exec_time, s.mean_exec_time,
       s.shared_blks_hit, s.shared_blks_read, s.shared_blks_dirtied, s.wal_bytes, s.toplevel
  FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
 WHERE d.datname = $1 AND s.query NOT LIKE '%/* bench */%'
 ORDER BY s.total_exec_time DESC
"""

TABLES = """/* bench */
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, n_live_tup, n_dead_tup,
       autovacuum_count, vacuum_count, autoanalyze_count, seq_scan, idx_scan
  FROM pg_stat_user_tables
 WHERE n_tup_ins + n_tup_upd + n_tup_del + n_dead_tup > 0
 ORDER BY n_tup_ins + n_tup_upd + n_tup_del DESC
"""


def statement_figures(rows: list[asyncpg.Record], n: int) -> dict[str, Any]:
    def one(r: asyncpg.Record) -> dict[str, Any]:
        return {
            "query": " ".join(str(r["query"]).split())[:400],
            "calls": r["calls"],
            "rows": r["rows"],
            "total_ms": round(r["total_exec_time"], 1),
            "mean_ms": round(r["mean_exec_time"], 3),
            "us_per_account": round(r["total_exec_time"] * 1000 / n, 1),
            "calls_per_account": round(r["calls"] / n, 3),
            "shared_blks_hit": r["shared_blks_hit"],
            "shared_blks_read": r["shared_blks_read"],
            "shared_blks_dirtied": r["shared_blks_dirtied"],
            "wal_bytes": int(r["wal_bytes"]),
            "toplevel": r["toplevel"],
        }

    # Nested statements (a trigger's, a function's) are counted inside their caller's time:
    # the totals add the top-level ones only.
    top = [r for r in rows if r["toplevel"]]
    return {
        "totals": {
            "statements": len(top),
            "calls_per_account": round(sum(r["calls"] for r in top) / n, 3),
            "exec_us_per_account": round(sum(r["total_exec_time"] for r in top) * 1000 / n, 1),
            "shared_blks_hit_per_account": round(sum(r["shared_blks_hit"] for r in top) / n, 1),
            "shared_blks_read_per_account": round(sum(r["shared_blks_read"] for r in top) / n, 2),
            "wal_bytes_per_account": round(sum(int(r["wal_bytes"]) for r in top) / n),
        },
        "top": [one(r) for r in rows[:TOP]],
    }


async def counted(database: str, n: int) -> dict[str, Any]:
    """pg_stat_statements for this database and its tables' counters, now."""
    # Backends flush their table counters at least once a second and at exit.
    await asyncio.sleep(1.5)
    conn = await asyncpg.connect(infra.db_url(database))
    try:
        tables = [dict(r) for r in await conn.fetch(TABLES)]
    finally:
        await conn.close()
    conn = await asyncpg.connect(infra.PG_ADMIN)  # the extension's view lives there
    try:
        statements = await conn.fetch(STATEMENTS, database)
    finally:
        await conn.close()
    return {"statements": statement_figures(statements, n), "tables": tables}


async def reset_statements() -> None:
    await infra.admin_execute("SELECT pg_stat_statements_reset()")


async def measure(bench: run.Bench, load: str, n: int) -> dict[str, Any]:
    await bench.template(n)  # seeded beforehand: its COPY is not the load's
    await reset_statements()
    load_before = infra.loadavg()
    started = time.time()
    if load == "distributor":
        label = f"dist{n}"
        await bench.distributor(n)
    else:
        label = "pipeline_default"
        await bench.billq(
            label, processes=2, concurrency=None, gateway="inprocess", mode="pipeline"
        )
    row = bench.rows[-1]
    database = f"{bench.tag}_{label}"
    try:
        stats = await counted(database, n)
    finally:
        await infra.drop_database(database)
    return {
        "load": load,
        "n": n,
        "billq_tree": infra.BILLQ_TREE or str(infra.ROOT),
        "commit": git_commit(Path(infra.BILLQ_TREE or infra.ROOT)),
        "accounts_per_s": round(row.rate),
        "seconds": round(row.seconds, 2),
        "wall_s": round(time.time() - started, 1),
        "checks_ok": row.ok,
        # The bench's meter: this load's Postgres backends and both servers' background
        # processes, the whole broker, the workers (a distributor row: its process instead).
        "cpu_s": {k: round(v, 2) for k, v in row.cpu_s.items()},
        "cpu_us_per_account": round(row.cpu_us_per_account),
        "extra": row.extra,
        "load_average": [load_before, infra.loadavg()],
        **stats,
    }


def git_commit(tree: Path) -> str:
    got = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return got.stdout.strip()


def show(result: dict[str, Any]) -> None:
    t = result["statements"]["totals"]
    print(
        f"\n== {result['load']} n={result['n']:,} ({result['commit']}):"
        f" {result['accounts_per_s']:,}/s, load {result['load_average']}, checks"
        f" {'ok' if result['checks_ok'] else 'FAILED'}, {result['cpu_us_per_account']} µs CPU per"
        f" account {result['cpu_s']}"
    )
    print(
        f"   per account: {t['calls_per_account']} statements, {t['exec_us_per_account']} µs exec,"
        f" {t['shared_blks_hit_per_account']} blocks hit, {t['shared_blks_read_per_account']}"
        f" read, {t['wal_bytes_per_account']} WAL bytes"
    )
    print(f"   {'µs/acct':>8} {'calls/acct':>10} {'mean ms':>8} {'rows':>8} {'WAL B':>10}  query")
    for s in result["statements"]["top"]:
        mark = "" if s["toplevel"] else "(nested) "
        print(
            f"   {s['us_per_account']:>8} {s['calls_per_account']:>10} {s['mean_ms']:>8}"
            f" {s['rows']:>8} {s['wal_bytes']:>10}  {mark}{s['query'][:90]}"
        )
    print(
        f"   {'table':<24} {'ins':>8} {'upd':>8} {'hot':>8} {'del':>7} {'dead':>8} {'autovac':>7}"
    )
    for r in result["tables"]:
        print(
            f"   {r['relname']:<24} {r['n_tup_ins']:>8} {r['n_tup_upd']:>8}"
            f" {r['n_tup_hot_upd']:>8} {r['n_tup_del']:>7} {r['n_dead_tup']:>8}"
            f" {r['autovacuum_count']:>7}"
        )


async def measure_all(args: argparse.Namespace, settings: dict[str, str]) -> None:
    await infra.admin_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    bench_args = argparse.Namespace(
        n=args.n,
        io_n=args.n,
        timeout=args.timeout,
        keep=True,  # the load's database outlives the row, for its table counters
        results=str(args.out),
        only=None,
        large=False,
        dashboard_jobs=0,
    )
    # One bench per tree: each migrates and seeds its own template (schemas differ).
    trees: list[str] = args.tree
    benches = {tree: run.Bench(bench_args) for tree in trees}
    results: list[dict[str, Any]] = []
    for i in range(args.repeat):
        # A B, then B A: a machine whose load drifts during the runs favours neither.
        order = trees if i % 2 == 0 else trees[::-1]
        for load, tree in itertools.product(args.load or LOADS, order):
            infra.BILLQ_TREE = tree
            result = await measure(benches[tree], load, args.n)
            result["postgres_settings"] = settings
            show(result)
            results.append(result)
            out = args.out / f"{args.label or 'latest'}.json"
            out.write_text(json.dumps(results, indent=2, default=str))


def stop_children() -> None:
    """billq processes a load left running when it was interrupted (this process's own)."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=30)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.pgstats",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=int, default=50_000, help="due accounts (default 50,000)")
    p.add_argument("--load", action="append", choices=LOADS, help="run only this load (repeatable)")
    p.add_argument("--repeat", type=int, default=1, help="run the loads this many times")
    p.add_argument(
        "--tree",
        action="append",
        metavar="DIR",
        help="a billq checkout (its own make install) to measure; repeatable: each load runs"
        " on each tree in turn on the same server, for an A/B (default: BENCH_BILLQ_TREE or"
        " this checkout)",
    )
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting instead of the machine's (e.g. autovacuum=on); repeatable",
    )
    p.add_argument("--label", default="", help="prefix of the result files (e.g. old / new)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per load")
    p.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = p.parse_args()
    if args.n < 1 or args.repeat < 1:
        p.error("--n and --repeat must be positive")
    if any("=" not in s for s in args.setting):
        p.error("--setting takes NAME=VALUE")
    args.out.mkdir(parents=True, exist_ok=True)
    args.tree = [str(Path(t).resolve()) for t in args.tree] if args.tree else [infra.BILLQ_TREE]
    major, settings = asyncio.run(machine_settings())
    settings.update(dict(s.split("=", 1) for s in args.setting))
    cluster = Cluster(bindir(major), settings)
    try:
        with stopped_on_signals():
            cluster.start()
            infra.PG_ADMIN = cluster.admin_url  # every bench helper reads it at call time
            print(f"pgstats: throwaway Postgres {major} on port {cluster.port} ({settings})")
            asyncio.run(measure_all(args, settings))
    finally:
        # Ignored from here on: a second Ctrl-C must not leave the cluster behind.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        stop_children()
        cluster.stop()


if __name__ == "__main__":
    main()
