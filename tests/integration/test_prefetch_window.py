"""The prefetch window is wider than the charge slots: while ``BILLQ_CONCURRENCY`` charges are
in flight, the next deliveries already wait in the worker (``BILLQ_PREFETCH``, default twice
the slots), so a freed slot never waits for the broker's next delivery — and no more than
``BILLQ_CONCURRENCY`` charges ever reach the gateway at once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncpg
import gatewaykit
import pytest
import testkit

from distributor.run import distribute
from shared.config import Settings

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)


async def ready(settings: Settings) -> int:
    return (await testkit.queue_depths(settings))[f"{settings.queue_prefix}.charge"][0]


@pytest.mark.parametrize(("concurrency", "prefetch"), [(2, 6), (3, None)])
async def test_a_worker_holds_its_window_while_only_its_slots_charge(
    settings: Settings,
    db: asyncpg.Connection,
    tmp_path: Path,
    concurrency: int,
    prefetch: int | None,
) -> None:
    n = 12
    window = prefetch or 2 * concurrency
    flight = gatewaykit.InFlight()
    # Each charge takes a second: long enough to look at the queue while the first are out.
    async with gatewaykit.sandbox(
        tmp_path / "ledger.sqlite3", in_flight=flight, latency_ms=1000
    ) as url:
        s = settings.model_copy(
            update={"gateway_url": url, "concurrency": concurrency, "prefetch": prefetch}
        )
        assert s.prefetch_window == window
        await testkit.seed(db, n)
        assert (await distribute(s, as_of=NOW)).published == n
        async with testkit.workers(s):

            async def slots_charging() -> bool:
                return flight.now == concurrency

            async def window_held() -> bool:
                return await ready(s) == n - window

            await testkit.wait_until(slots_charging, timeout=30, interval=0.02)
            await testkit.wait_until(window_held, timeout=30, interval=0.05)
            # ...before any charge finished: the window was filled, not drained down to it.
            assert flight.total == flight.now == concurrency
            await testkit.wait_until(lambda: testkit.all_terminal(db), timeout=60)
        assert flight.peak == concurrency
        intents = await gatewaykit.all_intents(url)
    keys = sorted(i["metadata"]["billq_idempotency_key"] for i in intents)
    assert len(keys) == n and len(set(keys)) == n, "each account charged once at the gateway"
    assert sorted(await db.fetchval("SELECT array_agg(idempotency_key) FROM charges")) == keys
    assert await ready(s) == 0
