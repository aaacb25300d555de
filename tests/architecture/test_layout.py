"""The layout is the architecture: import rules hold, and `shared` is ours."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import shared

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_shared_is_this_repositorys_package_not_a_namesake_from_pypi() -> None:
    assert Path(shared.__file__).resolve().is_relative_to(ROOT)


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", proc.stdout)
    assert kept and int(kept.group(1)) >= 4, proc.stdout  # pyproject.toml declares four


def test_the_domain_imports_no_io_library() -> None:
    forbidden = ("asyncpg", "aio_pika", "httpx", "aiohttp", "structlog")
    for path in (ROOT / "shared" / "billing").rglob("*.py"):
        text = path.read_text()
        for lib in forbidden:
            assert f"import {lib}" not in text and f"from {lib}" not in text, (path, lib)
