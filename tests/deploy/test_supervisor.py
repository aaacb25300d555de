"""The supervisor recipe under a real supervisord: stopping it lets in-flight work finish,
and nothing is redelivered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import testkit
from testkit import all_terminal, assert_charged_once, distribute, seed

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


async def test_supervisord_stops_workers_gently_and_nothing_is_redelivered(
    db: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    # The recipe as shipped, with only its install and log paths pointed at this test's.
    recipe = tmp_path / "billq-worker.conf"
    recipe.write_text(
        RECIPE.read_text()
        .replace("/opt/billq/bin/billq", str(Path(sys.executable).with_name("billq")))
        .replace("/var/log/billq", str(tmp_path))
    )
    conf = tmp_path / "supervisord.conf"
    conf.write_text(SUPERVISORD_CONF.format(recipe=recipe))
    with testkit.sandbox_gateway(tmp_path, "--latency-ms", "700") as url:
        env = testkit.env_for(settings.model_copy(update={"gateway_url": url}))
        env.update(BILLQ_CONCURRENCY="10")
        await seed(db, 400)
        distribute(env)
        supervisord = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            async def in_flight() -> bool:
                n = await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state='processing'")
                return bool(n >= 10)

            await testkit.wait_until(in_flight, timeout=60, interval=0.05)

            async def both_running() -> bool:
                status = subprocess.run(
                    [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "status"],
                    capture_output=True,
                    text=True,
                    check=False,
                    env=env,
                ).stdout
                return status.count("RUNNING") == 2  # numprocs=2 from the recipe

            await testkit.wait_until(both_running, timeout=20)
        finally:
            supervisord.terminate()  # SIGTERM: supervisord stops its programs with TERM
            assert supervisord.wait(timeout=60) == 0
        assert (
            await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state = 'processing'") == 0
        )
        done = await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state = 'succeeded'")
        assert 10 <= done < 400
        logs = "".join(p.read_text() for p in tmp_path.glob("billq-worker_*.log"))
        assert logs.count('"worker.stopped"') == 2
        assert "grace_expired" not in logs

        rest = testkit.spawn("worker", env=env, log=tmp_path / "rest.log")
        try:
            await testkit.wait_until(lambda: all_terminal(db), timeout=90)
        finally:
            testkit.stop_process(rest)
        assert await db.fetchval("SELECT max(attempts) FROM billing_jobs") == 1
        await assert_charged_once(db, url, settings, expect_charged=400)
