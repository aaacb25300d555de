"""Tests see no developer's environment: no ``BILLQ_*`` variable, no ``.env`` (conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import testkit

from shared.config import load_settings

pytestmark = pytest.mark.unit


def test_no_billq_variable_reaches_a_test() -> None:
    assert [name for name in os.environ if name.startswith("BILLQ_")] == []


def test_tests_run_where_no_env_file_can_be_read() -> None:
    assert Path.cwd().resolve() != testkit.ROOT
    assert not (Path.cwd() / ".env").exists()


def test_settings_are_the_documented_defaults() -> None:
    settings = load_settings()

    assert settings.database_url.get_secret_value() == "postgresql://postgres@127.0.0.1:5432/billq"
    assert (settings.queue_prefix, settings.gateway, settings.concurrency) == (
        "billq",
        "sandbox",
        256,
    )
    assert (settings.rate_limit_wait_s, settings.gateway_max_rps) == (45.0, 0.0)
    assert settings.retry_delays == [5.0, 30.0, 120.0, 600.0, 3600.0]


def test_a_subprocess_imports_this_tree_and_reads_no_env_file() -> None:
    script = (
        "import shared, shared.config as c; print(shared.__file__, c.load_settings().queue_prefix)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=testkit.clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()

    assert Path(out[0]).resolve().is_relative_to(testkit.ROOT)
    assert out[1] == "billq"
