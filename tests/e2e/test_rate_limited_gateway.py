"""A worker at concurrency 256 against a gateway that rate-limits far below it: the 429s are
waited out and resent in the worker, so every account is charged once, on its first attempt,
with the breaker closed and nothing dead-lettered."""

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

ACCOUNTS = 300
RATE_LIMIT = 45  # charge POSTs a second the sandbox takes; the rest are answered 429


async def test_a_rate_limited_gateway_costs_no_attempt_and_no_breaker_failure(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, ACCOUNTS)
    httpx.put(
        f"{gateway_url}/_sandbox/faults", json={"rate_limit": RATE_LIMIT}, timeout=5
    ).raise_for_status()
    assert distribute(tmp_env)["published"] == ACCOUNTS
    # 256 in flight against 45 a second: six seconds of work held in the worker at once. The
    # lease is the default one, so the wait budget is BILLQ_RATE_LIMIT_WAIT_S itself.
    env = tmp_env | {
        "BILLQ_CONCURRENCY": "256",
        "BILLQ_JOB_LEASE": "120",
        "BILLQ_RATE_LIMIT_WAIT_S": "50",
        "BILLQ_MAX_ATTEMPTS": "3",
    }
    log = tmp_path / "w.log"
    worker = testkit.spawn("worker", env=env, log=log)
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=120)
        # The next heartbeat shows the limit the 429s cut, still below the concurrency.
        await testkit.wait_until(lambda: _limit_below(env, 256), timeout=30)
        rows = json.loads(testkit.billq("workers", "--json", env=env).stdout)
        assert [r["breaker"] for r in rows if r["status"] == "live"] == ["closed"]
    finally:
        assert testkit.stop_process(worker) == 0

    states: dict[Any, Any] = {
        r[0]: r[1]
        for r in await db.fetch("SELECT state, count(*) FROM billing_jobs GROUP BY state")
    }
    assert states == {"succeeded": ACCOUNTS}
    # No attempt burned by a 429: every job succeeded on the attempt its claim spent.
    assert await db.fetchval("SELECT count(*) FROM billing_jobs WHERE attempts <> 1") == 0
    await assert_charged_once(db, gateway_url, settings, expect_charged=ACCOUNTS)
    assert await testkit.get_dead_letters(settings) == []
    # The gateway did refuse: the test would pass vacuously otherwise.
    refused = httpx.get(f"{gateway_url}/_sandbox/stats", timeout=5).json()["rate_limited"]
    assert refused > 0
    text = log.read_text()
    assert "gateway.breaker_opened" not in text
    cuts = text.count('"gateway.rate_limited"')
    assert 1 <= cuts <= refused  # sampled: at most one line per cut, never one per 429
    assert "job.retry_scheduled" not in text


async def _limit_below(env: dict[str, str], concurrency: int) -> bool:
    rows = json.loads(testkit.billq("workers", "--json", env=env).stdout)
    limits = [r["gateway_limit"] for r in rows if r["status"] == "live"]
    return len(limits) == 1 and limits[0] is not None and limits[0] < concurrency
