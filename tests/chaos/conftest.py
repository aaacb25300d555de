"""Chaos tests import their helpers (harness, services, proxy) from this folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _stop_pipelines() -> Iterator[None]:
    """Kill what a scenario started even when it fails half-way."""
    yield
    from harness import Pipeline

    for p in Pipeline.live:
        p.kill_all()
    Pipeline.live.clear()
