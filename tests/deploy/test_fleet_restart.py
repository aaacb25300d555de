"""`billq workers restart` under the real supervisor recipe: three workers finish their
in-flight charges, exit 3, and supervisord starts them again; nothing is redelivered."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import testkit
from testkit import all_terminal, assert_charged_once, distribute, seed

from shared.amqp import control
from shared.amqp.connection import connect_any
from shared.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
RECIPE = testkit.ROOT / "deploy" / "supervisor" / "billq-worker.conf"

SUPERVISORD_CONF = """
[unix_http_server]
file=%(here)s/supervisor.sock

[supervisord]
logfile=%(here)s/supervisord.log
pidfile=%(here)s/supervisord.pid
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://%(here)s/supervisor.sock

[include]
files = {recipe}
"""


def _logs(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in tmp_path.glob("billq-worker_*.log"))


async def test_workers_restart_recycles_every_worker_after_its_in_flight_charges(
    db: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    # The recipe as shipped, with its paths pointed at this test's and three processes.
    recipe = tmp_path / "billq-worker.conf"
    recipe.write_text(
        RECIPE.read_text()
        .replace("/opt/billq/bin/billq", str(Path(sys.executable).with_name("billq")))
        .replace("/var/log/billq", str(tmp_path))
        .replace("numprocs=2", "numprocs=3")
    )
    conf = tmp_path / "supervisord.conf"
    conf.write_text(SUPERVISORD_CONF.format(recipe=recipe))
    with testkit.sandbox_gateway(tmp_path, "--latency-ms", "1000") as url:
        env = testkit.env_for(settings.model_copy(update={"gateway_url": url}))
        env.update(BILLQ_CONCURRENCY="4")
        await seed(db, 120)
        distribute(env)
        supervisord = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            async def listening(n: int) -> bool:
                return _logs(tmp_path).count('"control.listening"') >= n

            await testkit.wait_until(lambda: listening(3), timeout=90)

            async def in_flight() -> bool:
                n = await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state='processing'")
                return bool(n >= 6)

            await testkit.wait_until(in_flight, timeout=60, interval=0.05)
            # What `billq workers restart` does (tests/integration/test_fleet_control.py runs
            # the command itself), in-process so it lands while charges are in flight.
            conn = await connect_any(settings.amqp_urls)
            try:
                assert await control.publish_restart(conn, settings, by="cli:deploy")
            finally:
                await conn.close()

            # Each worker drains and exits 3; supervisord starts it again, which listens anew.
            await testkit.wait_until(lambda: listening(6), timeout=120)
            restarted = _logs(tmp_path)
            await testkit.wait_until(lambda: all_terminal(db), timeout=120)  # the new workers
        finally:
            supervisord.terminate()
            assert supervisord.wait(timeout=60) == 0
        exits = re.findall(
            r"exited: (billq-worker_\d+) \(exit status (\d+)",
            (tmp_path / "supervisord.log").read_text(),
        )
        assert sorted(name for name, status in exits if status == "3") == [
            "billq-worker_00",
            "billq-worker_01",
            "billq-worker_02",
        ]
        logs = _logs(tmp_path)
        assert logs.count('"control.restart"') == 3
        assert logs.count("fleet restart requested by cli") >= 3  # recycling + stopped lines
        assert "grace_expired" not in logs
        assert '"worker.draining"' in restarted  # the restart found charges in flight
        # In-flight charges finished before each exit: no job was claimed twice.
        assert await db.fetchval("SELECT max(attempts) FROM billing_jobs") == 1
        await assert_charged_once(db, url, settings, expect_charged=120)
