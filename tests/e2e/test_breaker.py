"""An outage of the gateway, then a rotated key: the worker's breaker holds the work, and
when the gateway answers again every job is charged once, none dead-lettered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import testkit
from testkit import all_terminal, assert_charged_once, distribute, seed

from shared.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def switch(gateway_url: str, **faults: object) -> None:
    httpx.put(f"{gateway_url}/_sandbox/faults", json=faults, timeout=5).raise_for_status()


def breaker_states(env: dict[str, str]) -> list[str]:
    rows = json.loads(testkit.billq("workers", "--json", env=env).stdout)
    return [r["breaker"] for r in rows if r["status"] == "live"]


async def test_an_outage_and_a_rejected_key_hold_the_work_and_burn_no_attempts(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 60)
    switch(gateway_url, outage_status=503)
    assert distribute(tmp_env)["published"] == 60
    # Three attempts only: without the breaker the outage would kill every job.
    env = tmp_env | {
        "BILLQ_MAX_ATTEMPTS": "3",
        "BILLQ_BREAKER_PROBE_MIN_S": "0.1",
        "BILLQ_BREAKER_PROBE_MAX_S": "0.3",
    }
    worker = testkit.spawn("worker", "--concurrency", "16", env=env, log=tmp_path / "w.log")
    try:
        await testkit.wait_until(lambda: _is(env, "open"), timeout=60)

        async def probed(times: int, status: int) -> bool:
            lines = (tmp_path / "w.log").read_text().splitlines()
            probes = [line for line in lines if "gateway.breaker_probe_failed" in line]
            return len(probes) >= times and f" {status}" in probes[-1]

        await testkit.wait_until(lambda: probed(5, 503), timeout=30)
        switch(gateway_url, outage_status=401)  # a rotated key: still open, still nothing dead
        await testkit.wait_until(lambda: probed(10, 401), timeout=30)
        assert await _is(env, "open")
        assert await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state = 'dead'") == 0
        switch(gateway_url, outage_status=0)
        await testkit.wait_until(lambda: all_terminal(db), timeout=90)
        await testkit.wait_until(lambda: _is(env, "closed"), timeout=30)  # next heartbeat
    finally:
        assert testkit.stop_process(worker) == 0
    states: dict[Any, Any] = {
        r[0]: r[1]
        for r in await db.fetch("SELECT state, count(*) FROM billing_jobs GROUP BY state")
    }
    assert states == {"succeeded": 60}
    # Only the calls that opened the breaker spent an attempt: the held work spent none.
    assert await db.fetchval("SELECT max(attempts) FROM billing_jobs") <= 2
    await assert_charged_once(db, gateway_url, settings, expect_charged=60)
    log = (tmp_path / "w.log").read_text()
    assert log.count("gateway.breaker_opened") >= 1 and "gateway.breaker_closed" in log


async def _is(env: dict[str, str], state: str) -> bool:
    return breaker_states(env) == [state]
