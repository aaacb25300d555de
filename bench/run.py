"""Run every measurement, check correctness after each, print the table, write JSON + PNG.

Each measurement gets its own database (a clone of a seeded template) and its own queue
prefix, so measurements never see each other's rows or messages. Throughput is computed
from the timestamps Postgres recorded on the jobs, not from the bench's own clock:

- distributor: due accounts ÷ the run's duration (scan start → last confirmed publish);
- drain: accounts ÷ (last committed charge - first claim), queue filled beforehand;
- pipeline: accounts ÷ (last committed charge - first publish), workers already waiting
  while the distributor publishes (the number the 10M-in-30-minutes target is about);
- latency: published → committed per job, p50 / p99.

The ``dashboard`` row (bench/dashboard.py) times pages and API calls, not accounts/s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import infra

RESULTS = infra.ROOT / "bench" / "results"
# The priority lane row's bulk run (issue 14: "during a 50,000-account run").
PRIORITY_N = 50_000
HTTP_GATEWAYS = ("sandbox", "stripe")  # adapters that need the sandbox server
# The adapter rows: one worker, the same load, each adapter; CPU per charge of that process.
ADAPTERS = ("inprocess", "sandbox", "stripe")
ADAPTER_CONCURRENCY = 64


def _concurrency_shown(concurrency: int | None) -> tuple[int, str]:
    """A row's concurrency and its label: given, the default, or the caller's BILLQ_CONCURRENCY
    (which the workers inherit when the row leaves it to the default)."""
    if concurrency is not None:
        return concurrency, str(concurrency)
    given = os.environ.get("BILLQ_CONCURRENCY", "")
    if given.isdigit():
        return int(given), f"{given} (BILLQ_CONCURRENCY)"
    return infra.DEFAULT_CONCURRENCY, f"{infra.DEFAULT_CONCURRENCY} (default)"


@dataclass
class Row:
    name: str
    kind: str  # distributor | billq | floor | priority
    accounts: int
    processes: int = 1
    concurrency: int = 0
    gateway: str = ""
    mode: str = ""
    rate: float = 0.0  # accounts/s
    seconds: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mb: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_us_per_account: float = 0.0
    checks: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # row-specific figures
    ok: bool = False


def measured(
    name: str,
    kind: str,
    n: int,
    seconds: float,
    rss_mb: float,
    services: dict[str, float],
    checks: dict[str, Any],
    **fields: Any,
) -> Row:
    """A row from what a measurement saw: rate and CPU per account derived here."""
    return Row(
        name=name,
        kind=kind,
        accounts=n,
        rate=n / seconds,
        seconds=seconds,
        peak_rss_mb=rss_mb,
        cpu_s=services,
        cpu_us_per_account=sum(services.values()) / n * 1e6,
        checks=checks,
        ok=bool(checks["ok"]),
        **fields,
    )


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n: int = args.n
        self.io_n: int = args.io_n
        self.tag = infra.unique("bench")
        self.workdir = Path(args.results) / "logs" / self.tag
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.templates: dict[int, str] = {}
        self.rows: list[Row] = []
        self.dashboard_pages: dict[str, dict[str, Any]] = {}

    # --- preparation --------------------------------------------------------------

    async def template(self, n: int) -> str:
        """A migrated database holding ``n`` due accounts, cloned by each measurement."""
        if n not in self.templates:
            name = f"{self.tag}_tpl_{n}"
            infra.migrate(name, self.workdir)
            took = await infra.seed(name, n)
            print(f"  seeded {n:,} accounts in {took:.1f}s ({name})", flush=True)
            self.templates[n] = name
        return self.templates[n]

    async def fresh(self, n: int, label: str) -> tuple[str, str]:
        db = f"{self.tag}_{label}"
        await infra.clone_database(await self.template(n), db)
        return db, f"{self.tag}.{label}"

    async def cleanup(self, db: str, prefix: str) -> None:
        if not self.args.keep:
            await infra.drop_database(db)
        await infra.delete_topology(prefix)

    # --- processes ----------------------------------------------------------------

    def distribute(
        self, db: str, prefix: str, sampler: infra.RssSampler | None = None
    ) -> dict[str, Any]:
        env = infra.billq_env(db, prefix)
        log = self.workdir / f"{prefix}.distribute.log"
        out = self.workdir / f"{prefix}.distribute.json"
        with out.open("wb") as stdout, log.open("ab") as stderr:
            proc = subprocess.Popen(
                infra.billq_cmd("distribute", "--as-of", infra.AS_OF, "--json"),
                env=env,
                stdout=stdout,
                stderr=stderr,
                cwd=infra.ROOT,
            )
            if sampler is not None:
                sampler.watch(proc.pid)
            code = proc.wait(timeout=3600)
        if code != 0:
            raise RuntimeError(f"billq distribute exited {code}; see {log}")
        summary: dict[str, Any] = json.loads(out.read_text().strip().splitlines()[-1])
        return summary

    def start_workers(
        self, db: str, prefix: str, count: int, **settings: str
    ) -> list[subprocess.Popen[bytes]]:
        procs = []
        for i in range(count):
            port = infra.free_port()
            env = infra.billq_env(db, prefix, **settings)
            proc = infra.spawn(
                infra.billq_cmd("worker", "--metrics-port", str(port)),
                env,
                self.workdir / f"{prefix}.worker{i}.log",
            )
            infra.wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
            procs.append(proc)
        return procs

    def start_gateway(
        self, db: str, prefix: str, ledger: Path, *flags: str
    ) -> tuple[subprocess.Popen[bytes], str]:
        """A sandbox gateway with these fault flags; its process and URL."""
        port = infra.free_port()
        proc = infra.spawn(
            infra.billq_cmd(
                "sandbox-gateway", "--port", str(port), "--ledger", str(ledger), *flags
            ),
            infra.billq_env(db, prefix),
            self.workdir / f"{prefix}.gateway.log",
        )
        url = f"http://127.0.0.1:{port}"
        infra.wait_http(f"{url}/healthz", proc)
        return proc, url

    def start_floor(self, db: str, prefix: str, count: int, mode: str) -> list[Any]:
        procs = []
        for i in range(count):
            cmd = [
                sys.executable,
                "-m",
                "bench.floor",
                "--mode",
                mode,
                "--database-url",
                infra.db_url(db),
                "--amqp-url",
                infra.AMQP,
                "--queue",
                f"{prefix}.charge",
            ]
            procs.append(
                infra.spawn(cmd, dict(os.environ), self.workdir / f"{prefix}.floor{i}.log")
            )
        return procs

    async def wait_all_succeeded(self, db: str, n: int, procs: list[Any]) -> None:
        conn = await infra.connect(db)
        try:

            async def done() -> bool:
                for p in procs:
                    if p.poll() is not None:
                        raise RuntimeError(f"a process exited {p.returncode} mid-measurement")
                got = await conn.fetchval(
                    f"{infra.BENCH_SQL} SELECT count(*) FROM billing_jobs WHERE state = 'succeeded'"
                )
                return bool(got >= n)

            if not await infra.sleep_until(done, timeout=self.args.timeout, interval=0.25):
                raise RuntimeError(f"not every job succeeded within {self.args.timeout}s")
        finally:
            await conn.close()

    # --- figures and checks -------------------------------------------------------

    async def job_figures(self, db: str, since: str) -> dict[str, Any]:
        conn = await infra.connect(db)
        try:
            row = await conn.fetchrow(
                f"""{infra.BENCH_SQL}
                SELECT count(*) AS n,
                       extract(epoch FROM max(finished_at) - min({since})) AS seconds,
                       percentile_cont(0.5) WITHIN GROUP (
                           ORDER BY extract(epoch FROM finished_at - published_at)) AS p50,
                       percentile_cont(0.99) WITHIN GROUP (
                           ORDER BY extract(epoch FROM finished_at - published_at)) AS p99,
                       avg(attempts) AS mean_attempts,
                       -- The slowest job's own chain: first claim to its committed charge.
                       max(extract(epoch FROM finished_at - started_at)) AS slowest_chain_s
                  FROM billing_jobs WHERE state = 'succeeded'
                """
            )
        finally:
            await conn.close()
        assert row is not None
        return dict(row)

    async def check(
        self,
        db: str,
        prefix: str,
        n: int,
        ledger: Path | None = None,
        *,
        advanced_extra: int = 0,
    ) -> dict[str, Any]:
        """Every account charged exactly once, every job succeeded, every queue empty.
        ``advanced_extra``: accounts seen advanced to another period (the priority row's)."""
        conn = await infra.connect(db)
        try:
            counts = await conn.fetchrow(
                f"{infra.BENCH_SQL} SELECT count(*), count(DISTINCT account_id),"
                " count(DISTINCT idempotency_key)"
                " FROM charges"
            )
            assert counts is not None
            charges, accounts, keys = counts
            not_done = await conn.fetchval(
                f"{infra.BENCH_SQL} SELECT count(*) FROM billing_jobs WHERE state <> 'succeeded'"
            )
            advanced = await conn.fetchval(
                f"{infra.BENCH_SQL} SELECT count(*) FROM accounts WHERE next_billing_at = $1",
                infra.NEXT_PERIOD,
            )
        finally:
            await conn.close()
        depths = await infra.queue_depths(prefix)
        checks: dict[str, Any] = {
            "charges": charges,
            "accounts_charged": accounts,
            "jobs_not_succeeded": not_done,
            "accounts_advanced_once": advanced,
            "queue_messages_left": sum(depths.values()),
        }
        ok = (
            charges == accounts == keys == n
            and not_done == 0
            and advanced + advanced_extra == n
            and checks["queue_messages_left"] == 0
        )
        if ledger is not None:
            total, distinct, succeeded = infra.ledger_counts(ledger)
            checks.update(gateway_intents=total, gateway_keys=distinct, gateway_succeeded=succeeded)
            ok = ok and distinct == n and succeeded == n
        checks["ok"] = ok
        return checks

    def record(self, row: Row) -> None:
        self.rows.append(row)
        status = "ok" if row.ok else "FAILED CHECKS"
        lat = f" p50={row.p50_ms:.0f}ms p99={row.p99_ms:.0f}ms" if row.p50_ms is not None else ""
        print(
            f"  {row.name}: {row.rate:,.0f} accounts/s ({row.accounts:,} in {row.seconds:.1f}s)"
            f"{lat} rss={row.peak_rss_mb:.0f}MB [{status}]",
            flush=True,
        )

    # --- measurements -------------------------------------------------------------

    async def distributor(self, n: int) -> None:
        db, prefix = await self.fresh(n, f"dist{n}")
        cpu = infra.CpuMeter(db)
        try:
            with infra.RssSampler() as sampler:
                cpu.start()
                started = time.perf_counter()
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                summary = self.distribute(db, prefix, sampler)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                wall = time.perf_counter() - started
                services = cpu.stop()
                # The distributor is the only child reaped meanwhile. Its Postgres backends
                # are gone before the meter's second look, so Postgres is not counted here.
                services.pop("postgres", None)
                services["distributor"] = (after.ru_utime + after.ru_stime) - (
                    before.ru_utime + before.ru_stime
                )
            depths = await infra.queue_depths(prefix)
            conn = await infra.connect(db)
            try:
                published = await conn.fetchval(
                    f"{infra.BENCH_SQL} SELECT count(*) FROM billing_jobs WHERE state = 'published'"
                )
            finally:
                await conn.close()
            checks = {
                "due": summary["due"],
                "published_jobs": published,
                "work_queue_depth": depths.get("work", 0),
                "wall_seconds": round(wall, 2),
            }
            ok = summary["due"] == n and published == n and depths.get("work") == n
            checks["ok"] = ok
            seconds = float(summary["duration_s"])
            self.record(
                measured(
                    f"distributor N={n:,}",
                    "distributor",
                    n,
                    seconds,
                    sampler.peak_mb(),
                    services,
                    checks,
                )
            )
        finally:
            await self.cleanup(db, prefix)

    async def billq(
        self,
        label: str,
        *,
        processes: int,
        concurrency: int | None,
        gateway: str,
        latency_ms: int = 0,
        mode: str = "drain",
        n: int | None = None,
        faults: tuple[str, ...] = (),
        title: str = "",
        **extra_settings: str,
    ) -> None:
        """``concurrency=None``: the default a new user gets. ``faults``: sandbox flags."""
        n = n or self.n
        db, prefix = await self.fresh(n, label)
        gw_proc = None
        ledger = None
        settings = {"BILLQ_GATEWAY": gateway, **extra_settings}
        if concurrency is not None:
            settings["BILLQ_CONCURRENCY"] = str(concurrency)
        workers: list[subprocess.Popen[bytes]] = []
        extra: dict[str, Any] = {}
        try:
            if gateway in HTTP_GATEWAYS:
                # The Stripe adapter speaks to the sandbox too: it has Stripe's wire format.
                ledger = self.workdir / f"{prefix}.ledger.sqlite3"
                gw_proc, settings["BILLQ_GATEWAY_URL"] = self.start_gateway(
                    db, prefix, ledger, "--latency-ms", str(latency_ms), *faults
                )
            if mode == "drain":
                self.distribute(db, prefix)
            cpu = infra.CpuMeter(db)
            with infra.RssSampler() as sampler:
                workers = self.start_workers(db, prefix, processes, **settings)
                for w in workers:
                    sampler.watch(w.pid)
                cpu_before = infra.cpu_seconds([w.pid for w in workers])
                cpu.start()
                if mode == "pipeline":
                    summary = self.distribute(db, prefix)
                    # The distributor's own rate while the workers consume, and the dead
                    # job and account versions its run left behind (vacuum's backlog).
                    extra["distributor_rate"] = round(n / float(summary["duration_s"]))
                    extra["dead_tuples_after_distribute"] = await infra.dead_tuples(db)
                await self.wait_all_succeeded(db, n, workers)
                services = cpu.stop()
                services["billq"] = infra.cpu_seconds([w.pid for w in workers]) - cpu_before
            for w in workers:
                infra.stop_process(w)
            workers = []
            if gw_proc is not None:
                infra.stop_process(gw_proc)
                gw_proc = None
            figures = await self.job_figures(
                db, "started_at" if mode == "drain" else "published_at"
            )
            checks = await self.check(db, prefix, n, ledger)
            seconds = float(figures["seconds"])
            if faults:
                # Retries set such a run's length: how many, and the slowest job's own chain.
                extra["mean_attempts"] = round(float(figures["mean_attempts"]), 2)
                extra["slowest_chain_s"] = round(float(figures["slowest_chain_s"]), 1)
            gw = gateway + (f" {latency_ms}ms" if gateway in HTTP_GATEWAYS else "") + title
            conc, shown = _concurrency_shown(concurrency)
            self.record(
                measured(
                    f"billq {mode}, {gw}, {processes} proc x {shown}",
                    "billq",
                    n,
                    seconds,
                    sampler.peak_mb(),
                    services,
                    checks,
                    processes=processes,
                    concurrency=conc,
                    gateway=gw,
                    mode=mode,
                    p50_ms=float(figures["p50"]) * 1000,
                    p99_ms=float(figures["p99"]) * 1000,
                    extra=extra,
                )
            )
        finally:
            for w in workers:
                infra.stop_process(w)
            if gw_proc is not None:
                infra.stop_process(gw_proc)
            await self.cleanup(db, prefix)

    async def floor(self, label: str, *, processes: int, mode: str) -> None:
        n = self.n
        db, prefix = await self.fresh(n, label)
        procs: list[Any] = []
        try:
            self.distribute(db, prefix)
            cpu = infra.CpuMeter(db)
            with infra.RssSampler() as sampler:
                procs = self.start_floor(db, prefix, processes, mode)
                for p in procs:
                    sampler.watch(p.pid)
                cpu.start()
                await self.wait_all_succeeded(db, n, procs)
                services = cpu.stop()
                services["floor"] = infra.cpu_seconds([p.pid for p in procs])
            for p in procs:
                infra.stop_process(p)
            procs = []
            figures = await self.job_figures(db, "started_at")
            checks = await self.check(db, prefix, n)
            seconds = float(figures["seconds"])
            self.record(
                measured(
                    f"floor {mode}, {processes} proc",
                    "floor",
                    n,
                    seconds,
                    sampler.peak_mb(),
                    services,
                    checks,
                    processes=processes,
                    mode=mode,
                )
            )
        finally:
            for p in procs:
                infra.stop_process(p)
            await self.cleanup(db, prefix)

    async def priority(self, n: int) -> None:
        from bench import priority

        await priority.measure(self, n)

    async def dashboard(self) -> None:
        """Page and API latency of ``billq dashboard`` with a 1,000,000-job run."""
        from bench import dashboard

        n = self.args.dashboard_jobs
        db, prefix = f"{self.tag}_dashboard", f"{self.tag}.dashboard"
        infra.migrate(db, self.workdir)
        try:
            took = await dashboard.seed(db, n)
            print(f"  seeded a {n:,}-job run in {took:.1f}s ({db})", flush=True)
            self.dashboard_pages = await asyncio.to_thread(
                dashboard.measure, db, prefix, self.workdir
            )
            dashboard.print_pages(self.dashboard_pages, n)
        finally:
            await self.cleanup(db, prefix)

    async def dramatiq(self) -> None:
        """The peers' Dramatiq equivalent (``bench/dramatiq_peer.py``): 2 processes x 16
        threads consuming while one process enqueues a message per due account."""
        n = self.n
        db, prefix = await self.fresh(n, "dramatiq")
        queue = f"{prefix}.dramatiq"
        env = {
            **os.environ,
            "BENCH_PEER_DATABASE_URL": infra.db_url(db),
            "BENCH_PEER_AMQP": infra.AMQP,
            "BENCH_PEER_QUEUE": queue,
        }
        peer = [sys.executable, "-m", "bench.dramatiq_peer"]
        workers = None
        try:
            self.run_peer([*peer, "table"], env)
            cpu = infra.CpuMeter(db)
            with infra.RssSampler() as sampler:
                cmd = [sys.executable, "-m", "dramatiq", "bench.dramatiq_peer"]
                workers = infra.spawn(
                    [*cmd, "--processes", "2", "--threads", "16"],
                    env,
                    self.workdir / f"{prefix}.dramatiq.log",
                )
                # Its worker processes are up once both have declared the queue and consume.
                await infra.wait_consumers(queue, 2, workers)
                family = infra.process_family(workers.pid)
                for pid in family:
                    sampler.watch(pid)
                cpu_before = infra.cpu_seconds(family)
                cpu.start()
                started = time.time()
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                self.run_peer([*peer, "enqueue"], env)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                await self.wait_peer_done(db, n, workers)
                services = cpu.stop()
                services["dramatiq"] = infra.cpu_seconds(family) - cpu_before
                services["enqueuer"] = (after.ru_utime + after.ru_stime) - (
                    before.ru_utime + before.ru_stime
                )
            infra.stop_process(workers)
            workers = None
            conn = await infra.connect(db)
            try:
                last = await conn.fetchval(
                    "SELECT extract(epoch FROM max(created_at)) FROM peer_charges"
                )
                charged = await conn.fetchval("SELECT count(DISTINCT account_id) FROM peer_charges")
                advanced = await conn.fetchval(
                    "SELECT count(*) FROM accounts WHERE next_billing_at = $1", infra.NEXT_PERIOD
                )
            finally:
                await conn.close()
            left = await infra.message_count(queue)
            checks = {"peer_charges": charged, "accounts_advanced_once": advanced, "left": left}
            checks["ok"] = charged == n and advanced == n and left == 0
            self.record(
                measured(
                    "dramatiq pipeline, 2 proc x 16 threads",
                    "dramatiq",
                    n,
                    float(last) - started,
                    sampler.peak_mb(),
                    services,
                    checks,
                    processes=2,
                    concurrency=16,
                    mode="pipeline",
                )
            )
        finally:
            if workers is not None:
                infra.stop_process(workers)
            for q in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                await infra.delete_queue(q)
            await self.cleanup(db, prefix)

    def run_peer(self, cmd: list[str], env: dict[str, str]) -> None:
        with (self.workdir / "dramatiq.enqueue.log").open("ab") as log:
            code = subprocess.call(cmd, env=env, cwd=infra.ROOT, stdout=log, stderr=log)
        if code != 0:
            raise RuntimeError(f"{' '.join(cmd[1:])} exited {code}")

    async def wait_peer_done(self, db: str, n: int, proc: subprocess.Popen[bytes]) -> None:
        conn = await infra.connect(db)
        try:

            async def done() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"dramatiq exited {proc.returncode} mid-measurement")
                return bool(await conn.fetchval("SELECT count(*) FROM peer_charges") >= n)

            if not await infra.sleep_until(done, timeout=self.args.timeout, interval=0.25):
                raise RuntimeError(f"dramatiq did not charge every account in {self.args.timeout}s")
        finally:
            await conn.close()

    # --- the whole run --------------------------------------------------------------

    def step(self, name: str, **measurement: Any) -> tuple[str, Any]:
        """A named ``billq`` measurement, its databases and queues labelled after it."""
        return name, lambda: self.billq(name.replace("-", "_"), **measurement)

    async def run(self) -> dict[str, Any]:
        started = dt.datetime.now(dt.UTC)
        print(f"billq bench: N={self.n:,} (I/O-bound N={self.io_n:,}), tag {self.tag}", flush=True)
        steps: list[tuple[str, Any]] = [
            ("distributor", lambda: self.distributor(self.n)),
            ("distributor-1m", lambda: self.distributor(1_000_000) if self.args.large else None),
            ("dashboard", self.dashboard),
            ("floor-single", lambda: self.floor("floor_single", processes=2, mode="single")),
            ("floor-batched", lambda: self.floor("floor_batched", processes=2, mode="batched")),
            (
                "inproc1",
                lambda: self.billq("inproc1", processes=1, concurrency=512, gateway="inprocess"),
            ),
            (
                "inproc2",
                lambda: self.billq("inproc2", processes=2, concurrency=512, gateway="inprocess"),
            ),
            (
                "inproc3",
                lambda: self.billq("inproc3", processes=3, concurrency=512, gateway="inprocess"),
            ),
            (
                "pipeline2",
                lambda: self.billq(
                    "pipeline2", processes=2, concurrency=512, gateway="inprocess", mode="pipeline"
                ),
            ),
            self.step(
                "pipeline256", processes=2, concurrency=256, gateway="inprocess", mode="pipeline"
            ),
            (
                "pipeline-default",
                lambda: self.billq(
                    "pipeline_default",
                    processes=2,
                    concurrency=None,
                    gateway="inprocess",
                    mode="pipeline",
                ),
            ),
            ("dramatiq", self.dramatiq),
            (
                "sandbox0",
                lambda: self.billq(
                    "sandbox0", processes=1, concurrency=256, gateway="sandbox", n=self.io_n
                ),
            ),
        ]
        steps += [
            self.step(
                f"adapter-{adapter}",
                processes=1,
                concurrency=ADAPTER_CONCURRENCY,
                gateway=adapter,
                n=max(1, self.io_n // 4),
                title=" (adapter CPU)",
            )
            for adapter in ADAPTERS
        ]
        steps += [
            self.step(
                f"sandbox200c{conc}",
                processes=1,
                concurrency=conc,
                gateway="sandbox",
                latency_ms=200,
                n=self.io_n,
            )
            for conc in (256, 1024)
        ]
        steps += [
            (
                "sandbox200spiky",
                lambda: self.billq(
                    "sandbox200spiky",
                    processes=1,
                    concurrency=256,
                    gateway="sandbox",
                    latency_ms=200,
                    n=self.io_n,
                    faults=("--spike-rate", "0.02", "--spike-ms", "3000", "--seed", "7"),
                    title=" +2% 3s spikes",
                ),
            ),
            (
                "storm",
                lambda: self.billq(
                    "storm",
                    processes=2,
                    concurrency=64,
                    gateway="sandbox",
                    n=max(1, self.io_n // 10),
                    faults=("--fail-rate", "0.2", "--timeout-rate", "0.1", "--seed", "7"),
                    title=" storm (20% 5xx, 10% 5s timeouts)",
                    # Short retry tiers: the row measures the worker, not the default backoff.
                    BILLQ_GATEWAY_TIMEOUT="5",
                    BILLQ_RETRY_DELAYS="[1, 2, 4]",
                    BILLQ_MAX_ATTEMPTS="20",
                ),
            ),
        ]
        steps.append(("priority", lambda: self.priority(min(self.n, PRIORITY_N))))
        try:
            for name, step in steps:
                if self.args.only and not any(name.startswith(o) for o in self.args.only):
                    continue
                coro = step()
                if coro is not None:
                    await coro
        finally:
            for name in self.templates.values():
                await infra.drop_database(name)
        return {
            "started_at": started.isoformat(),
            "n": self.n,
            "io_n": self.io_n,
            "machine": infra.machine_facts(),
            "services": await infra.server_versions(),
            "settings": infra.passthrough_settings(),
            "rows": [asdict(r) for r in self.rows],
            "dashboard": {"jobs": self.args.dashboard_jobs, "pages": self.dashboard_pages}
            if self.dashboard_pages
            else None,
            "ratios": self.ratios(),
            "targets": self.targets(),
        }

    def find(self, kind: str, mode: str, processes: int, gateway: str = "") -> Row | None:
        for r in self.rows:
            same = r.kind == kind and r.mode == mode and r.processes == processes
            if same and (not gateway or r.gateway == gateway):
                return r
        return None

    def ratios(self) -> dict[str, float]:
        out: dict[str, float] = {}
        batched = self.find("floor", "batched", 2)
        single = self.find("floor", "single", 2)
        billq2 = self.find("billq", "drain", 2, "inprocess")
        if billq2 and batched:
            out["billq_2proc_over_floor_batched"] = round(billq2.rate / batched.rate, 2)
        if billq2 and single:
            out["billq_2proc_over_floor_single"] = round(billq2.rate / single.rate, 2)
        dist = next((r for r in self.rows if r.kind == "distributor"), None)
        for pipe in (r for r in self.rows if r.mode == "pipeline" and r.gateway == "inprocess"):
            key = f"pipeline_{pipe.processes}x{pipe.concurrency}"
            if dist and billq2:
                # Both stages on the same cores: the rate their CPU allows is one account
                # through the distributor then through the workers, back to back.
                stages = 1 / (1 / dist.rate + 1 / billq2.rate)
                out[f"{key}_over_stages"] = round(pipe.rate / stages, 2)
            if dist and pipe.extra.get("distributor_rate"):
                out[f"{key}_distributor_over_alone"] = round(
                    pipe.extra["distributor_rate"] / dist.rate, 2
                )
        clean = next(
            (r for r in self.rows if r.gateway == "sandbox 200ms" and r.concurrency == 256), None
        )
        spiky = next((r for r in self.rows if r.gateway.startswith("sandbox 200ms +2%")), None)
        if clean and spiky:
            out["sandbox200_spiky_over_clean"] = round(spiky.rate / clean.rate, 2)
        storm = next((r for r in self.rows if "storm" in r.gateway), None)
        if storm and storm.extra.get("slowest_chain_s"):
            # Near 1: the run lasted as long as its slowest job's retries, not longer.
            out["storm_span_over_slowest_chain"] = round(
                storm.accounts / storm.rate / storm.extra["slowest_chain_s"], 2
            )
        for row in self.rows:
            if row.gateway.endswith("(adapter CPU)"):
                # The worker process alone: what the adapter (and billq) cost per charge.
                adapter = row.gateway.split()[0]
                out[f"cpu_us_per_charge_{adapter}"] = round(row.cpu_s["billq"] / row.accounts * 1e6)
        peer = next((r for r in self.rows if r.kind == "dramatiq"), None)
        default = next(
            (r for r in self.rows if r.mode == "pipeline" and r.name.endswith("(default)")), None
        )
        if peer and default:
            out["pipeline_default_over_dramatiq"] = round(default.rate / peer.rate, 2)
        return out

    def targets(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        def target(what: str, measured: float | None, goal: float, above: bool = True) -> None:
            met = measured is not None and (measured >= goal if above else measured <= goal)
            out.append({"target": what, "measured": measured, "goal": goal, "met": met})

        pipe = self.find("billq", "pipeline", 2, "inprocess")
        drain = self.find("billq", "drain", 2, "inprocess")
        target("e2e 2 proc pipeline, accounts/s", round(pipe.rate) if pipe else None, 6000)
        target("e2e 2 proc drain, accounts/s", round(drain.rate) if drain else None, 6000)
        target(
            "billq 2 proc ÷ floor batched",
            self.ratios().get("billq_2proc_over_floor_batched"),
            0.5,
        )
        dist = [r for r in self.rows if r.kind == "distributor"]
        if dist:
            target("distributor accounts/s", round(dist[0].rate), 8000)
            target("distributor peak RSS MB", round(max(r.peak_rss_mb for r in dist)), 150, False)
        if len(dist) == 2:
            growth = dist[1].peak_rss_mb / dist[0].peak_rss_mb
            target("distributor RSS 1M ÷ 100k", round(growth, 2), 1.2, False)
        target(
            "billq pipeline (defaults) ÷ Dramatiq, same run",
            self.ratios().get("pipeline_default_over_dramatiq"),
            3.0,
        )
        io = [r for r in self.rows if r.gateway == "sandbox 200ms"]
        if io:
            target("1 proc at 200 ms gateway, accounts/s", round(max(r.rate for r in io)), 1000)
        prio = next((r for r in self.rows if r.kind == "priority"), None)
        if prio is not None and prio.p99_ms is not None:
            target("priority charge during a bulk run, p99 ms", round(prio.p99_ms), 1000, False)
        if self.dashboard_pages:
            slowest = max(
                max(f["cold_max_ms"], f["warm_max_ms"]) for f in self.dashboard_pages.values()
            )
            target("dashboard slowest page ms (1M-job run)", slowest, 200, False)
        conc512 = [r for r in self.rows if r.kind == "billq" and r.concurrency == 512]
        if conc512:
            worst = round(max(r.peak_rss_mb for r in conc512))
            target("worker peak RSS MB at concurrency 512", worst, 200, False)
        return out


def print_table(result: dict[str, Any]) -> None:
    print()
    head = (
        f"{'measurement':<46} {'accounts/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>7}"
        f" {'µs CPU/acct':>11} {'checks':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        p50 = f"{r['p50_ms']:.0f}" if r["p50_ms"] is not None else "-"
        p99 = f"{r['p99_ms']:.0f}" if r["p99_ms"] is not None else "-"
        cpu = f"{r['cpu_us_per_account']:.0f}" if r["cpu_us_per_account"] else "-"
        print(
            f"{r['name']:<46} {r['rate']:>10,.0f} {p50:>8} {p99:>8} {r['peak_rss_mb']:>7.0f}"
            f" {cpu:>11} {'ok' if r['ok'] else 'FAILED':>7}"
        )
    for r in result["rows"]:
        if r.get("extra"):
            print(f"  {r['name']}: {r['extra']}")
    if result.get("dashboard"):
        from bench import dashboard

        dashboard.print_pages(result["dashboard"]["pages"], result["dashboard"]["jobs"])
    print()
    for k, v in result["ratios"].items():
        print(f"{k}: {v}")
    print()
    for t in result["targets"]:
        mark = "met" if t["met"] else "NOT met"
        print(f"target {t['target']}: measured {t['measured']} vs {t['goal']} → {mark}")


def chart(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if r["kind"] != "distributor"]
    labels = [r["name"].replace(", ", "\n") for r in rows]
    rates = [r["rate"] for r in rows]
    colors = ["#999999" if r["kind"] == "floor" else "#1f77b4" for r in rows]
    fig, ax = plt.subplots(figsize=(12, 5))
    ax.bar(range(len(rows)), rates, color=colors)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("accounts/s")
    ax.set_title(
        f"billq throughput by worker processes x concurrency and gateway (N={result['n']:,};"
        " grey: bare aio-pika + asyncpg floor)"
    )
    ax.axhline(6000, linestyle="--", color="red", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure the distributor, billq end to end and the bare floor; "
        "check every account was charged exactly once after each; print and save results.",
    )
    p.add_argument("--large", action="store_true", help="also run the distributor at 1M accounts")
    p.add_argument(
        "--n", type=int, default=int(os.environ.get("BENCH_N", "100000")), help="accounts (BENCH_N)"
    )
    p.add_argument(
        "--io-n",
        type=int,
        default=int(os.environ.get("BENCH_IO_N", "20000")),
        help="accounts for the HTTP gateway runs (BENCH_IO_N)",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    p.add_argument("--keep", action="store_true", help="keep the measurement databases")
    p.add_argument("--results", default=str(RESULTS), help="where to write JSON, chart and logs")
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only measurements whose name starts with NAME (repeatable): distributor, "
        "floor-single, floor-batched, inproc1, inproc2, inproc3, pipeline2, pipeline256, "
        "pipeline-default, dramatiq, sandbox0, adapter-inprocess, adapter-sandbox, "
        "adapter-stripe (or adapter), sandbox200, sandbox200spiky, storm, dashboard, priority",
    )
    p.add_argument(
        "--dashboard-jobs",
        type=int,
        default=1_000_000,
        help="jobs in the dashboard row's seeded run (default 1,000,000)",
    )
    args = p.parse_args()
    if args.n < 1 or args.io_n < 1:
        p.error("--n and --io-n must be positive")
    bench = Bench(args)
    result = asyncio.run(bench.run())
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "latest.json").write_text(json.dumps(result, indent=2, default=str))
    print_table(result)
    png = results / "throughput.png"
    print(
        f"\nresults: {results / 'latest.json'}" + (f", chart: {png}" if chart(result, png) else "")
    )
    sys.exit(0 if all(r["ok"] for r in result["rows"]) else 1)


if __name__ == "__main__":
    main()
