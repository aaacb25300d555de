"""``python -m bench.profile``: where the default pipeline's CPU goes, per process.

The bench's ``µs CPU/acct`` sums Postgres and RabbitMQ as wholes: the distributor's database
sessions end before its meter looks again, and Postgres' background processes and the broker
count other users' work too, for as long as a run lasts (a slow run looks costlier per
account). Here each Postgres backend is sampled while it lives and named after the billq
process whose socket it serves, and the distributor's own CPU comes from its exit status
(``wait4``). Optionally py-spy samples each worker and the distributor (``--py-spy``).

Same load as the ``pipeline-default`` row: ``--n`` due accounts, 2 workers with the default
settings (``--setting BILLQ_X=Y`` to change one), in-process gateway, ``billq distribute``
started while they wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench import infra

CLIENT_PORT = re.compile(r"\((\d+)\)")
PG_PORT = 5432
WORKERS = 2


class Backends(threading.Thread):
    """CPU of this database's backends, each named after the process that opened it."""

    def __init__(self, database: str) -> None:
        super().__init__(daemon=True)
        self.database = database
        self.clients: dict[str, int] = {}  # role -> pid
        self._role_of_port: dict[int, str] = {}
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._role: dict[int, str] = {}
        self.stop = threading.Event()

    def _learn_ports(self) -> None:
        for role, pid in list(self.clients.items()):
            with contextlib.suppress(psutil.Error):
                for conn in psutil.Process(pid).net_connections(kind="tcp"):
                    if conn.raddr and conn.raddr.port == PG_PORT:
                        self._role_of_port[conn.laddr.port] = role

    def sample(self) -> None:
        self._learn_ports()
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info.get("cmdline") or [])
            if not cmd.startswith("postgres:") or f" {self.database} " not in cmd:
                continue
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                self._first.setdefault(proc.pid, times.user + times.system)
                self._last[proc.pid] = times.user + times.system
            port = CLIENT_PORT.search(cmd)
            if port and proc.pid not in self._role:
                role = self._role_of_port.get(int(port.group(1)))
                if role:
                    self._role[proc.pid] = role

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.1)

    def by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, cpu in self._last.items():
            role = f"postgres: {self._role.get(pid, 'other')} sessions"
            out[role] = out.get(role, 0.0) + cpu - self._first[pid]
        return out


def background_postgres() -> dict[int, float]:
    """The server's own processes (WAL writer, checkpointer, autovacuum: every database's)."""
    out = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if cmd.startswith("postgres") and "(" not in cmd:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
    return out


def py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    tool = Path(sys.executable).parent / "py-spy"
    cmd = [str(tool), "record", "--nonblocking", "-r", "50", "-f", "raw", "-o", str(out)]
    return subprocess.Popen(
        [*cmd, "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def distribute(env: dict[str, str], out: Path, backends: Backends, spy: bool) -> float:
    """``billq distribute`` to the end; its CPU seconds, from its exit status."""
    cmd = infra.billq_cmd("distribute", "--as-of", infra.AS_OF, "--json")
    with (
        (out / "distribute.json").open("wb") as stdout,
        (out / "distribute.log").open("wb") as stderr,
    ):
        proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, cwd=infra.ROOT)
        backends.clients["distributor"] = proc.pid
        spies = [py_spy(proc.pid, out / "distributor.spy.txt")] if spy else []
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop_spies(spies)
    if proc.returncode != 0:
        raise RuntimeError(f"billq distribute exited {proc.returncode}; see {out}")
    return usage.ru_utime + usage.ru_stime


def stop_spies(spies: list[subprocess.Popen[bytes]]) -> None:
    for s in spies:
        s.send_signal(2)  # py-spy writes its file on SIGINT
    for s in spies:
        s.wait(timeout=60)


async def all_succeeded(db: str, n: int) -> None:
    conn = await infra.connect(db)
    try:

        async def done() -> bool:
            got = await conn.fetchval("SELECT count(*) FROM billing_jobs WHERE state = 'succeeded'")
            return bool(got >= n)

        if not await infra.sleep_until(done, timeout=3600, interval=0.2):
            raise RuntimeError("not every job succeeded within an hour")
    finally:
        await conn.close()


def start_workers(env: dict[str, str], out: Path, backends: Backends) -> list[Any]:
    workers = []
    for i in range(WORKERS):
        port = infra.free_port()
        cmd = infra.billq_cmd("worker", "--metrics-port", str(port))
        workers.append(infra.spawn(cmd, env, out / f"worker{i}.log"))
        infra.wait_http(f"http://127.0.0.1:{port}/readyz", workers[-1], timeout=60)
        backends.clients[f"worker{i}"] = workers[-1].pid
    return workers


def broker_cpu() -> float:
    pid = infra._listener_pid(5672)
    return sum(psutil.Process(pid).cpu_times()[:2]) if pid else 0.0


async def profile(n: int, out: Path, settings: dict[str, str], spy: bool) -> dict[str, Any]:
    tag = infra.unique("profile")
    template, db, prefix = f"{tag}_tpl", f"{tag}_db", f"{tag}.q"
    infra.migrate(template, out)
    await infra.seed(template, n)
    await infra.clone_database(template, db)
    env = infra.billq_env(db, prefix, BILLQ_GATEWAY="inprocess", **settings)
    backends = Backends(db)
    workers: list[Any] = []
    spies: list[subprocess.Popen[bytes]] = []
    try:
        workers = start_workers(env, out, backends)
        rabbit_before, pg_before = broker_cpu(), background_postgres()
        workers_before = infra.cpu_seconds([w.pid for w in workers])
        load_before = os.getloadavg()[0]
        backends.start()
        started = time.time()
        if spy:
            spies = [py_spy(w.pid, out / f"worker{i}.spy.txt") for i, w in enumerate(workers)]
        distributor = await asyncio.to_thread(distribute, env, out, backends, spy)
        distributed = time.time()
        await all_succeeded(db, n)
        finished = time.time()
        backends.stop.set()
        backends.join()
        backends.sample()
        pg_after = background_postgres()
        cpu = {
            "worker processes": infra.cpu_seconds([w.pid for w in workers]) - workers_before,
            "distributor process": distributor,
            **backends.by_role(),
            "postgres: background (whole server)": sum(
                v - pg_before[pid] for pid, v in pg_after.items() if pid in pg_before
            ),
            "rabbitmq (whole broker)": broker_cpu() - rabbit_before,
        }
    finally:
        stop_spies(spies)
        for w in workers:
            infra.stop_process(w)
        await infra.drop_database(db)
        await infra.drop_database(template)
        await infra.delete_topology(prefix)
    return {
        "n": n,
        "settings": settings,
        "accounts_per_s": round(n / (finished - started)),
        "distributor_s": round(distributed - started, 1),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_us_per_account": {k: round(v / n * 1e6) for k, v in cpu.items()},
        "cpu_us_per_account_total": round(sum(cpu.values()) / n * 1e6),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--n", type=int, default=30_000, help="due accounts (default 30,000)")
    p.add_argument("--out", default=str(infra.ROOT / "bench" / "results" / "profile"))
    p.add_argument("--setting", action="append", default=[], metavar="BILLQ_X=Y")
    p.add_argument("--py-spy", action="store_true", help="also sample each process with py-spy")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(s.split("=", 1) for s in args.setting)
    result = asyncio.run(profile(args.n, out, settings, args.py_spy))
    (out / "profile.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
