"""The API's aiohttp application: shared state, middlewares, routes, start and stop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
import structlog
from aio_pika.abc import AbstractConnection
from aiohttp import web

from api import auth, errors
from shared.amqp.publisher import Publisher
from shared.config import Settings

log = structlog.get_logger("billq.api")

MAX_BODY_BYTES = 64 * 1024  # a charge request is a few hundred bytes


@dataclass
class State:
    """What every handler needs: settings, the pool, a confirming publisher."""

    settings: Settings
    pool: asyncpg.Pool
    _broker: AbstractConnection | None = None
    _publisher: Publisher | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def publisher(self) -> Publisher:
        """The publisher, on a broker connection opened on first use and again after it
        closed.

        Raises:
            BrokerUnavailable: no broker answered (the job waits for the outbox repair).
        """
        from shared.oneoff import open_publisher

        async with self._lock:
            if self._broker is None or self._broker.is_closed or self._publisher is None:
                self._broker, self._publisher = await open_publisher(self.settings)
            return self._publisher

    async def close(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()
        if self._broker is not None:
            await self._broker.close()
        await self.pool.close()


STATE = web.AppKey("state", State)


def build_app(state: State) -> web.Application:
    from api import routes

    app = web.Application(
        middlewares=[errors.middleware(), auth.middleware(state.settings.api_token_list)],
        client_max_size=MAX_BODY_BYTES,
    )
    app[STATE] = state
    routes.add_routes(app)
    return app


async def serve(settings: Settings, *, host: str, port: int, stop: asyncio.Event) -> int:
    """Serve until ``stop`` is set."""
    from shared.db.pool import create_pool

    pool = await create_pool(settings, min_size=1, max_size=4)
    state = State(settings, pool)
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("api.started", host=host, port=port, tokens=len(settings.api_token_list))
        await stop.wait()
    finally:
        await runner.cleanup()
        await state.close()
    log.info("api.stopped")
    return 0
