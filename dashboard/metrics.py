"""``/metrics``: the scale hint as a gauge, so the autoscaler follows the deadline.

``billq_workers_needed{deadline=…}`` is ``billq scale-hint``'s ``workers_needed`` for the
oldest open run, whose deadline is its start plus ``--finish-within``. KEDA scales the
worker Deployment on it (deploy/k8s/keda-scaledobject.yaml): the hint drives autoscaling
instead of raw queue depth, which says nothing about how much time is left.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
from prometheus_client import CollectorRegistry, Gauge, generate_latest

OLDEST_OPEN_RUN = """
SELECT id, started_at FROM billing_runs
 WHERE state IN ('running', 'published') ORDER BY id LIMIT 1
"""

DRAIN_WINDOW_S = 60


async def render(pool: asyncpg.Pool, finish_within_s: int) -> bytes:
    from shared import views

    registry = CollectorRegistry()
    run = await pool.fetchrow(OLDEST_OPEN_RUN)
    now = dt.datetime.now(dt.UTC)
    deadline = (
        run["started_at"] + dt.timedelta(seconds=finish_within_s)
        if run is not None
        else now + dt.timedelta(seconds=finish_within_s)
    )
    hint = await views.scale_hint_at(pool, deadline, DRAIN_WINDOW_S)
    needed = hint["workers_needed"]
    if needed is None:
        # Open jobs but nothing drained yet (or the deadline passed): keep what runs, at
        # least one worker, so a rate can be observed; never scale to zero with work left.
        needed = max(1, hint["live_workers"])
    Gauge(
        "billq_workers_needed",
        "Workers needed to finish the open jobs by the run's deadline (scale hint)",
        ["deadline"],
        registry=registry,
    ).labels(deadline.isoformat(timespec="seconds")).set(needed)
    Gauge("billq_open_jobs", "Jobs not finished yet", registry=registry).set(hint["open_jobs"])
    Gauge(
        "billq_drain_rate_per_second", "Jobs finished per second (last minute)", registry=registry
    ).set(hint["rate_per_s"])
    Gauge("billq_live_workers", "Workers with a fresh heartbeat", registry=registry).set(
        hint["live_workers"]
    )
    return generate_latest(registry)
