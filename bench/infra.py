"""The bench's plumbing: databases, queues, subprocesses, RSS and CPU sampling.

Nothing here is on a measured hot path: it prepares, watches and cleans up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import psutil

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN") or os.environ.get(
    "BILLQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP = os.environ.get("BENCH_AMQP") or os.environ.get(
    "BILLQ_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/"
)
# Every seeded account is due at this fixed instant: results do not depend on today's date.
AS_OF = "2026-03-01T12:00:00Z"
DUE_AT = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
NEXT_PERIOD = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
# Settings the bench owns; any other BILLQ_* in the caller's environment is passed through
# (e.g. BILLQ_WORKER_BATCH_MAX=64 python -m bench) and recorded in the results.
OWNED = (
    "BILLQ_DATABASE_URL",
    "BILLQ_AMQP_URL",
    "BILLQ_QUEUE_PREFIX",
    "BILLQ_GATEWAY",
    "BILLQ_GATEWAY_URL",
    "BILLQ_LOG_FORMAT",
)
ACCOUNT_COLUMNS = (
    "id",
    "name",
    "email",
    "amount_cents",
    "currency",
    "billing_interval",
    "billing_anchor_day",
    "next_billing_at",
    "status",
    "payment_method",
    "gateway_customer",
)
# Retry tiers billq declares by default (BILLQ_RETRY_DELAYS), for the emptiness checks.
DEFAULT_RETRY_DELAYS = (5, 30, 120, 600, 3600)
# ... and those the storm row and the soak set: their retry queues are checked and deleted
# too (missing ones are skipped), or a message waiting there would pass for "none left".
RETRY_DELAYS_IN_USE = (*DEFAULT_RETRY_DELAYS, 1, 2, 3, 4, 10)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def db_url(name: str) -> str:
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def passthrough_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("BILLQ_") and k not in OWNED} | {
        "BILLQ_LOG_LEVEL": os.environ.get("BILLQ_LOG_LEVEL", "info")
    }


def billq_env(database: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment for a billq subprocess pointed at this database and queue prefix."""
    env = {k: v for k, v in os.environ.items() if k not in OWNED}
    env.update(passthrough_settings())
    env.update(
        BILLQ_DATABASE_URL=db_url(database),
        BILLQ_AMQP_URL=AMQP,
        BILLQ_QUEUE_PREFIX=prefix,
        BILLQ_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


# Marks the bench's own polling statements, so that bench.pgstats can leave them out of what
# pg_stat_statements says billq spent (the statement text keeps the comment).
BENCH_SQL = "/* bench */"

# billq's BILLQ_CONCURRENCY default (the bench imports no billq code; keep in step).
DEFAULT_CONCURRENCY = 256


async def dead_tuples(database: str) -> dict[str, int]:
    """Dead row versions per billq table now (vacuum's backlog), from pg_stat_user_tables."""
    conn = await connect(database)
    try:
        # The statistics collector reports with a delay; ask for a fresh snapshot.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = await conn.fetch(
            f"{BENCH_SQL} SELECT relname, n_dead_tup FROM pg_stat_user_tables"
            " WHERE relname IN ('billing_jobs', 'accounts')"
        )
    finally:
        await conn.close()
    return {r["relname"]: int(r["n_dead_tup"]) for r in rows}


# Another checkout of billq to measure with this bench (its own ``make install``), e.g. the
# code before a change for an A/B; its interpreter runs with -P so that the bench's working
# directory never shadows that checkout's packages.
BILLQ_TREE = os.environ.get("BENCH_BILLQ_TREE", "")


def billq_cmd(*args: str) -> list[str]:
    if BILLQ_TREE:
        return [str(Path(BILLQ_TREE) / ".venv" / "bin" / "python"), "-P", "-m", "billq", *args]
    return [sys.executable, "-m", "billq", *args]


# --- databases ------------------------------------------------------------------------


async def admin_execute(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def clone_database(template: str, name: str) -> None:
    await admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


def migrate(database: str, workdir: Path) -> None:
    """``billq migrate`` (creates the database) as a subprocess."""
    env = billq_env(database, "unused")
    proc = subprocess.run(
        billq_cmd("migrate"),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"billq migrate exited {proc.returncode}: {proc.stderr[-1000:]}")
    (workdir / f"migrate-{database}.log").write_text(proc.stdout + proc.stderr)


def account_rows(first: int, last: int) -> Iterator[tuple[object, ...]]:
    """Accounts ``first``..``last``: monthly, due at ``DUE_AT``, a card that succeeds."""
    for i in range(first, last + 1):
        yield (
            i,
            f"Bench {i}",
            f"bench{i}@example.com",
            900 + (i % 50) * 100,
            "USD",
            "month",
            1,
            DUE_AT,
            "active",
            "pm_card_visa",
            f"cus_{i:08d}",
        )


async def seed(database: str, n: int) -> float:
    """COPY ``n`` accounts in; returns seconds taken."""
    started = time.perf_counter()
    conn = await asyncpg.connect(db_url(database))
    try:
        chunk = 200_000
        for lo in range(1, n + 1, chunk):
            rows = list(account_rows(lo, min(n, lo + chunk - 1)))
            await conn.copy_records_to_table("accounts", records=rows, columns=ACCOUNT_COLUMNS)
        await conn.execute("ANALYZE accounts")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def connect(database: str) -> asyncpg.Connection:
    return await asyncpg.connect(db_url(database))


async def server_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            out["postgres"] = str(await conn.fetchval("SHOW server_version"))
            for name in ("synchronous_commit", "shared_buffers", "max_connections"):
                out[f"postgres.{name}"] = str(await conn.fetchval(f"SHOW {name}"))
        finally:
            await conn.close()
    with contextlib.suppress(Exception):
        amqp = await aio_pika.connect(AMQP)
        try:
            props: Any = amqp.transport.connection.server_properties  # type: ignore[union-attr]
            version = props.get("version", b"?")
            out["rabbitmq"] = version.decode() if isinstance(version, bytes) else str(version)
        finally:
            await amqp.close()
    return out


# --- RabbitMQ -------------------------------------------------------------------------


def queue_names(prefix: str) -> dict[str, str]:
    names = {
        "work": f"{prefix}.charge",
        "priority": f"{prefix}.charge.priority",
        "dead": f"{prefix}.charge.dead",
    }
    for d in RETRY_DELAYS_IN_USE:
        names[f"retry.{d}s"] = f"{prefix}.charge.retry.{d}s"
        names[f"priority.retry.{d}s"] = f"{prefix}.charge.priority.retry.{d}s"
    return names


async def queue_depths(prefix: str) -> dict[str, int]:
    """Ready messages per queue (passive declare); missing queues are left out."""
    out: dict[str, int] = {}
    conn = await aio_pika.connect(AMQP)
    try:
        for key, q in queue_names(prefix).items():
            channel = await conn.channel()
            try:
                decl = await channel.declare_queue(q, passive=True)
                out[key] = decl.declaration_result.message_count or 0
            except aio_pika.exceptions.AMQPError:
                continue
            with contextlib.suppress(Exception):
                await channel.close()
    finally:
        await conn.close()
    return out


async def delete_topology(prefix: str) -> None:
    conn = await aio_pika.connect(AMQP)
    try:
        for q in queue_names(prefix).values():
            channel = await conn.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(q, if_unused=False, if_empty=False)
        for ex in (prefix, f"{prefix}.dlx"):
            channel = await conn.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.exchange_delete(ex)
    finally:
        await conn.close()


async def _declared(queue: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of an existing queue, or None (passive declare)."""
    conn = await aio_pika.connect(AMQP)
    try:
        channel = await conn.channel()
        try:
            decl = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.AMQPError:
            return None
        result = decl.declaration_result
        return result.message_count or 0, result.consumer_count or 0
    finally:
        await conn.close()


async def message_count(queue: str) -> int:
    got = await _declared(queue)
    return got[0] if got else 0


async def wait_consumers(queue: str, count: int, proc: subprocess.Popen[bytes]) -> None:
    """Until ``count`` consumers are on ``queue`` (a peer's workers are ready)."""

    async def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode} while starting")
        got = await _declared(queue)
        return got is not None and got[1] >= count

    if not await sleep_until(ready, timeout=60):
        raise RuntimeError(f"fewer than {count} consumers on {queue} after 60s")


async def delete_queue(queue: str) -> None:
    conn = await aio_pika.connect(AMQP)
    try:
        channel = await conn.channel()
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.queue_delete(queue, if_unused=False, if_empty=False)
    finally:
        await conn.close()


def process_family(pid: int) -> list[int]:
    """A process and all its descendants (a peer's CLI forks its worker processes)."""
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return [pid]


# --- subprocesses ---------------------------------------------------------------------


def spawn(cmd: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen(list(cmd), env=dict(env), stdout=out, stderr=out, cwd=ROOT)
    finally:
        out.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode} before {url} answered")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def ledger_counts(path: Path) -> tuple[int, int, int]:
    """(intents, distinct billq keys, succeeded) in a stopped sandbox gateway's ledger."""
    db = sqlite3.connect(path)
    try:
        total, keys = db.execute(
            "SELECT count(*), count(DISTINCT billq_key) FROM payment_intents"
        ).fetchone()
        succeeded = sum(
            1
            for (body,) in db.execute("SELECT body FROM payment_intents")
            if json.loads(body).get("status") == "succeeded"
        )
    finally:
        db.close()
    return int(total), int(keys), succeeded


class RssSampler:
    """Peak RSS of a set of processes, polled at ~20 Hz on a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self._interval = interval
        self._procs: dict[int, psutil.Process] = {}
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, pid: int) -> None:
        with self._lock, contextlib.suppress(psutil.Error):
            self._procs[pid] = psutil.Process(pid)
            self.peak.setdefault(pid, 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                procs = list(self._procs.items())
            for pid, proc in procs:
                with contextlib.suppress(psutil.Error):
                    rss = proc.memory_info().rss
                    self.peak[pid] = max(self.peak[pid], rss)
            self._stop.wait(self._interval)

    def peak_mb(self, pid: int | None = None) -> float:
        if pid is not None:
            return self.peak.get(pid, 0) / 1e6
        return max(self.peak.values(), default=0) / 1e6


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


@dataclass
class CpuMeter:
    """CPU seconds spent by the services during a measurement, from /proc.

    Postgres: the backends connected to the bench's database plus the shared background
    processes (WAL writer, checkpointer, ...). RabbitMQ: the process listening on the AMQP
    port (the whole broker: other users of the broker are counted too).
    """

    database: str
    _start: dict[str, dict[int, float]] = field(default_factory=dict)

    def _processes(self) -> dict[str, list[psutil.Process]]:
        groups: dict[str, list[psutil.Process]] = {"postgres": [], "rabbitmq": []}
        port = urlsplit(AMQP).port or 5672
        rabbit_pid = _listener_pid(port)
        for proc in psutil.process_iter(["name", "cmdline"]):
            info = proc.info
            cmd = " ".join(info.get("cmdline") or [])
            if info.get("name") == "postgres" or cmd.startswith("postgres:"):
                is_backend = ("(" in cmd and ")" in cmd) or "[local]" in cmd
                if not is_backend or f" {self.database} " in cmd:
                    groups["postgres"].append(proc)
            elif proc.pid == rabbit_pid:
                groups["rabbitmq"].append(proc)
        return groups

    def _snapshot(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for group, procs in self._processes().items():
            out[group] = {}
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    out[group][p.pid] = t.user + t.system
        return out

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        end = self._snapshot()
        return {
            group: sum(cpu - self._start.get(group, {}).get(pid, 0.0) for pid, cpu in pids.items())
            for group, pids in end.items()
        }


def _listener_pid(port: int) -> int | None:
    with contextlib.suppress(psutil.Error):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                return c.pid
    return None


def machine_facts() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
    }


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


async def sleep_until(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False
