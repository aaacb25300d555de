"""The dashboard's pure parts: loopback detection, the figures cache, charts, amounts."""

from __future__ import annotations

import asyncio

import pytest

from dashboard.cache import Cache
from dashboard.charts import bars_svg
from dashboard.formatting import duration, money
from shared.entrypoint import is_loopback

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("dashboard.example.com", False),
    ],
)
def test_only_loopback_addresses_may_serve_without_a_token(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_the_cache_computes_once_for_concurrent_viewers_and_serves_the_last_result() -> None:
    calls = 0
    release = asyncio.Event()

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return calls

    cache = Cache(fresh_s=0.0, stale_s=60.0)
    waiting = [asyncio.create_task(cache.get("run", compute)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [1] * 5
    assert calls == 1
    # Past fresh_s but within stale_s: the last result at once, one refresh behind it.
    assert await cache.get("run", compute) == 1
    await asyncio.sleep(0.01)
    assert calls == 2
    # Cleared (an action ran): nothing stale is served, the caller waits for a new result.
    cache.clear()
    assert await cache.get("run", compute) == 3


def test_charts_are_svg_bars_scaled_to_the_peak() -> None:
    svg = str(bars_svg([0, 5, 10]))
    assert svg.startswith("<svg") and svg.count("<rect") == 3
    assert "peak 10" in svg
    assert "no jobs finished yet" in str(bars_svg([0, 0]))


def test_amounts_and_durations_read_like_the_cli() -> None:
    assert money(123456, "USD") == "1,234.56 USD"
    assert money(None, "USD") == "-"
    assert duration(None) == "-"
    assert duration(59) == "59s"
    assert duration(3725) == "1h 02m"
