"""Throwaway RabbitMQ nodes and Postgres clusters the chaos suite may kill -9.

Each lives in its own temp directory on its own ports; the machine's services are never
touched. Every child process is reaped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise AssertionError(f"port {port} did not open within {timeout}s")


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise AssertionError(f"Postgres binary {name} not found")
    return found[-1]


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(p) for p in out.split()]


def _kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def kill_epmd(port: int) -> None:
    """The epmd a throwaway node started (``epmd -daemon``, its port only in its env)."""
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if "epmd" not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            if f"ERL_EPMD_PORT={port}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                _kill9(int(proc.name))


class ThrowawayPostgres:
    """initdb + pg_ctl as user postgres on a free port; ``crash`` kills -9 the lot.

    ``standby_of``: instead of initdb, a streaming standby of that (running) primary,
    cloned with ``pg_basebackup -R`` (standby.signal and primary_conninfo written for us).
    """

    def __init__(self, *, standby_of: ThrowawayPostgres | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="billq-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        shutil.chown(self.root, "postgres", "postgres")
        if standby_of is None:
            self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        else:
            self._run(
                _pg_bin("pg_basebackup"),
                *("-h", "127.0.0.1", "-p", str(standby_of.port), "-U", "postgres"),
                *("-D", str(self.data), "-R", "-X", "stream", "-c", "fast"),
            )
        self.extra_options = ""

    def promote(self) -> None:
        """End recovery: this standby becomes a read-write primary (``pg_ctl promote -w``)."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-w", "promote")

    def _run(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            capture_output=True,
            cwd=self.root,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/billq"

    def start(self) -> None:
        for stale in (self.data / "postmaster.pid", self.root / f".s.PGSQL.{self.port}.lock"):
            stale.unlink(missing_ok=True)
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.root / "log"),
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=on -c max_connections=200" + self.extra_options,
            "start",
        )
        wait_port(self.port)

    def postmaster_pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(pidfile.read_text().split()[0])
        return None

    def crash(self) -> None:
        pid = self.postmaster_pid()
        if pid is None:
            return
        kids = _children(pid)
        _kill9(pid)
        for kid in kids:
            _kill9(kid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            state = (
                Path(f"/proc/{pid}/stat").read_text().split()[2]
                if Path(f"/proc/{pid}/stat").exists()
                else "X"
            )
            if state == "Z":
                break
            time.sleep(0.05)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        self.crash()
        shutil.rmtree(self.root, ignore_errors=True)


class ThrowawayRabbit:
    """A RabbitMQ node with its own HOME, cookie, epmd port, data and ports."""

    SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"

    def __init__(
        self, name: str = "chaos", epmd_port: int | None = None, root: Path | None = None
    ) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="billq-rmq-"))
        self.name = name
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = epmd_port or free_port()
        self.home = self.root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.root / f"{name}.conf").write_text("loopback_users = none\n")
        (self.root / f"{name}.plugins").write_text("[].\n")
        (self.root / "empty.env").write_text("")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_CONF_ENV_FILE=str(self.root / "empty.env"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_CONFIG_FILE=str(self.root / self.name),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / f"{self.name}.plugins"),
            RABBITMQ_PID_FILE=str(self.root / f"{self.name}.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1",
        )
        return env

    def start(self) -> None:
        log = (self.root / f"{self.name}.out").open("ab")
        self.proc = subprocess.Popen(
            [self.SERVER], env=self.env(), stdout=log, stderr=log, start_new_session=True
        )
        wait_port(self.port, timeout=90)

    def ctl(self, *args: str) -> str:
        return subprocess.run(
            [self.CTL, "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    def beam_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / f"{self.name}.pid").read_text().strip())
        return None

    def crash(self) -> None:
        pid = self.beam_pid()
        if pid is not None:
            _kill9(pid)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        (self.root / f"{self.name}.pid").unlink(missing_ok=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the listener must be gone before a restart
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            except OSError:
                return
            time.sleep(0.1)

    def stop(self) -> None:
        self.crash()
        # The private epmd this node started.
        kill_epmd(self.epmd_port)


class ThrowawayCluster:
    """Three ThrowawayRabbit nodes sharing one HOME (Erlang cookie) and one epmd port,
    joined with stop_app / reset / join_cluster / start_app."""

    def __init__(self, size: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="billq-rmq-cluster-"))
        epmd = free_port()
        self.nodes = [
            ThrowawayRabbit(name, epmd_port=epmd, root=self.root) for name in "abc"[:size]
        ]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (BILLQ_AMQP_URL)."""
        return ",".join(n.url for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            for step in (("stop_app",), ("reset",), ("join_cluster", first.node), ("start_app",)):
                node.ctl(*step)
        status = first.ctl("cluster_status")
        for node in self.nodes:
            assert node.node in status, f"{node.node} did not join: {status}"

    def running(self) -> list[ThrowawayRabbit]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def leader_of(self, queue: str) -> ThrowawayRabbit:
        """The node leading a quorum queue, as a live member reports it."""
        out = self.running()[0].ctl("list_queues", "-q", "--no-table-headers", "name", "leader")
        for line in out.splitlines():
            name, _, leader = line.partition("\t")
            if name.strip() == queue:
                return next(n for n in self.nodes if n.node == leader.strip())
        raise AssertionError(f"queue {queue} not found: {out}")

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.crash()
        kill_epmd(self.nodes[0].epmd_port)
        shutil.rmtree(self.root, ignore_errors=True)


def stop_all(*services: ThrowawayPostgres | ThrowawayRabbit | ThrowawayCluster) -> None:
    for s in services:
        with contextlib.suppress(Exception):
            s.stop()
