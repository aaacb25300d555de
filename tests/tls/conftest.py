"""TLS tests reuse the chaos suite's throwaway services and pipeline harness."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "chaos")]


@pytest.fixture(autouse=True)
def _stop_pipelines() -> Iterator[None]:
    """Kill what a test started even when it fails half-way."""
    yield
    from harness import Pipeline

    for p in Pipeline.live:
        p.kill_all()
    Pipeline.live.clear()
