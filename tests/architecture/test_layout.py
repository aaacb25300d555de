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
    assert kept and int(kept.group(1)) >= 5, proc.stdout  # pyproject.toml declares five


def test_the_domain_imports_no_io_library() -> None:
    forbidden = ("asyncpg", "aio_pika", "httpx", "aiohttp", "structlog")
    for path in (ROOT / "shared" / "billing").rglob("*.py"):
        text = path.read_text()
        for lib in forbidden:
            assert f"import {lib}" not in text and f"from {lib}" not in text, (path, lib)


@pytest.mark.parametrize(
    "package", ["billq", "distributor", "worker", "sandbox", "dashboard", "api"]
)
def test_each_entry_point_runs_from_the_source_tree_without_package_metadata(
    package: str, tmp_path: Path
) -> None:
    # No entry-point group glues the commands together: the source tree alone is enough.
    proc = subprocess.run(
        [sys.executable, "-m", package, "--help"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:"), proc.stdout


PRODUCT = ("billq", "shared", "distributor", "worker", "sandbox", "dashboard", "api")


def test_no_product_module_is_long_without_saying_why() -> None:
    long = []
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            if text.count("\n") > 400 and "Longer than most" not in text.split('"""')[1]:
                long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert not long, long
