"""Operating a worker: metrics and health endpoints during a real run, self-recycling."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import httpx
import pytest
import testkit
from testkit import all_terminal, assert_charged_once, distribute, seed

from shared.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def metric(text: str, name: str, **labels: str) -> float:
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + ("{" + label + "}" if label else "")) + r" ([0-9.e+]+)"
    match = re.search(pattern, text)
    assert match, f"{name} {labels} not in metrics"
    return float(match.group(1))


async def test_metrics_and_health_endpoints_show_the_numbers_of_a_real_run(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    port = testkit.free_port()
    await seed(db, 50, card=lambda i: "pm_card_chargeDeclined" if i == 7 else "pm_card_visa")
    worker = testkit.spawn(
        "worker", "--metrics-port", str(port), env=tmp_env, log=tmp_path / "worker.log"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        testkit.wait_http(base + "/healthz", worker)
        testkit.wait_http(base + "/readyz", worker)
        distribute(tmp_env)
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)
        text = httpx.get(base + "/metrics", timeout=5).text
        assert metric(text, "billq_messages_handled_total", outcome="succeeded") == 49
        assert metric(text, "billq_messages_handled_total", outcome="declined") == 1
        assert metric(text, "billq_gateway_seconds_count") == 50
        assert metric(text, "billq_handle_seconds_count") == 50
        assert metric(text, "billq_in_flight") == 0
        assert metric(text, "billq_prefetch") == settings.prefetch_window
        assert metric(text, "billq_last_heartbeat_timestamp_seconds") > 0
        assert httpx.get(base + "/healthz", timeout=5).json()["ok"] is True
    finally:
        assert testkit.stop_process(worker) == 0
    await assert_charged_once(db, gateway_url, settings, expect_charged=49)


async def test_a_worker_recycles_itself_after_its_message_limit_and_nothing_is_lost(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 40)
    distribute(tmp_env)
    worker = testkit.spawn(
        "worker", "--max-messages", "10", "--concurrency", "2", env=tmp_env, log=tmp_path / "w1.log"
    )
    assert worker.wait(timeout=60) == 3  # distinct code: supervisor restarts it
    handled = await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state = 'succeeded'")
    assert 10 <= handled < 40
    assert await db.fetchval("SELECT count(*) FROM billing_jobs WHERE state='processing'") == 0
    rest = testkit.spawn("worker", env=tmp_env, log=tmp_path / "w2.log")
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)
    finally:
        testkit.stop_process(rest)
    await assert_charged_once(db, gateway_url, settings, expect_charged=40)
    assert await db.fetchval("SELECT max(attempts) FROM billing_jobs") == 1
