"""A topology mismatch is a configuration error: one clear line and exit 2, no reconnect
storm (the worker used to reconnect ~100 times a second forever)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import testkit

from shared.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.mark.parametrize(
    "command",
    [
        ("topology",),
        ("worker", "--gateway", "inprocess"),
        ("distribute", "--as-of", testkit.AS_OF),
    ],
    ids=["topology", "worker", "distribute"],
)
def test_a_changed_delivery_limit_against_existing_queues_exits_2_with_one_line(
    command: tuple[str, ...], settings: Settings, tmp_env: dict[str, str], tmp_path: Path
) -> None:
    testkit.billq("migrate", env=tmp_env)
    testkit.billq("topology", env=tmp_env)  # the queues exist with the default limit
    env = tmp_env | {"BILLQ_DELIVERY_LIMIT": "5", "BILLQ_LOG_LEVEL": "error"}
    proc = subprocess.run(
        [sys.executable, "-m", "billq", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # a storm would never end: the timeout fails the test
        cwd=testkit.ROOT,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("billq: error: RabbitMQ refused the topology")
    assert "x-delivery-limit" in lines[0] and "PRECONDITION_FAILED" in lines[0]
