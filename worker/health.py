"""``/metrics``, ``/healthz`` and ``/readyz`` on the worker's metrics port.

healthz: the process is alive and its event loop answers promptly (this handler runs on
that loop, and the loop's recent lag is checked). readyz: connected to the broker and
consuming, and the database answered the last heartbeat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.metrics import Metrics

MAX_LOOP_LAG_S = 5.0


class HealthServer:
    def __init__(self, metrics: Metrics, ready: Callable[[], tuple[bool, str]]) -> None:
        self._metrics = metrics
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self._lag = 0.0
        self._ticker: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_view)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self._ticker = asyncio.create_task(self._measure_lag())

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        if self._runner:
            await self._runner.cleanup()

    async def _measure_lag(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(1.0)
            self._lag = max(0.0, time.monotonic() - start - 1.0)

    async def _metrics_view(self, _: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        if self._lag > MAX_LOOP_LAG_S:
            return web.json_response({"ok": False, "loop_lag_s": self._lag}, status=503)
        return web.json_response({"ok": True, "loop_lag_s": round(self._lag, 3)})

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, why = self._ready()
        return web.json_response({"ok": ok, "detail": why}, status=200 if ok else 503)
