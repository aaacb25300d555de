"""`make bench` at toy size: every measurement runs, checks the money and writes its results.

Figures are printed, never asserted; what is asserted is that the bench measures what it
says (rows, correctness checks, JSON shape) and cleans up after itself.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import testkit

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_the_bench_measures_checks_and_cleans_up(tmp_path: Path) -> None:
    stdout, result = _bench(
        tmp_path,
        *("--n", "400", "--io-n", "150", "--only", "distributor", "--only", "floor-batched"),
        *("--only", "inproc1", "--only", "sandbox0"),
    )
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {
        "distributor N=400",
        "floor batched, 2 proc",
        "billq drain, inprocess, 1 proc x 512",
        "billq drain, sandbox 0ms, 1 proc x 256",
    }
    for row in rows.values():
        assert row["ok"] and row["checks"]["ok"], row
        assert row["rate"] > 0
    billq = rows["billq drain, inprocess, 1 proc x 512"]["checks"]
    assert billq["charges"] == billq["accounts_charged"] == 400
    assert billq["queue_messages_left"] == 0
    sandbox = rows["billq drain, sandbox 0ms, 1 proc x 256"]["checks"]
    assert sandbox["gateway_keys"] == sandbox["gateway_succeeded"] == 150
    assert "target distributor accounts/s" in stdout


def test_the_adapter_rows_and_the_dramatiq_peer_measure_and_check_the_money(
    tmp_path: Path,
) -> None:
    # `make install` installs the bench extra: the peer is measured in every test run.
    assert importlib.util.find_spec("dramatiq"), "the bench extra: pip install -e '.[bench]'"
    _, result = _bench(
        tmp_path,
        *("--n", "300", "--io-n", "200", "--only", "dramatiq", "--only", "adapter"),
    )
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {
        "dramatiq pipeline, 2 proc x 16 threads",
        "billq drain, inprocess (adapter CPU), 1 proc x 64",
        "billq drain, sandbox 0ms (adapter CPU), 1 proc x 64",
        "billq drain, stripe 0ms (adapter CPU), 1 proc x 64",
    }
    for row in rows.values():
        assert row["ok"] and row["checks"]["ok"], row
    peer = rows["dramatiq pipeline, 2 proc x 16 threads"]["checks"]
    assert peer["peer_charges"] == peer["accounts_advanced_once"] == 300
    stripe = rows["billq drain, stripe 0ms (adapter CPU), 1 proc x 64"]["checks"]
    assert stripe["gateway_keys"] == stripe["gateway_succeeded"] == 50
    for adapter in ("inprocess", "sandbox", "stripe"):
        # 50 in-process charges may take less than the kernel's 10 ms CPU tick: 0 is a figure.
        assert result["ratios"][f"cpu_us_per_charge_{adapter}"] >= 0


def _bench(results: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """Run the bench; its stdout and results, once it exited 0 and dropped its databases."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--results", str(results), *args],
        cwd=testkit.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tag = proc.stdout.split("tag ", 1)[1].split()[0]
    assert _databases_named(tag) == []  # every measurement database dropped
    result: dict[str, Any] = json.loads((results / "latest.json").read_text())
    return proc.stdout, result


def _databases_named(prefix: str) -> list[str]:
    async def names() -> list[str]:
        conn = await asyncpg.connect(testkit.PG_ADMIN)
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%"
            )
        finally:
            await conn.close()
        return [r["datname"] for r in rows]

    return asyncio.run(names())
