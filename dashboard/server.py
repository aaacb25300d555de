"""The dashboard's aiohttp application: shared state, routes, start and stop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import jinja2
import structlog
from aio_pika.abc import AbstractConnection
from aiohttp import web

from dashboard import auth
from dashboard.cache import Cache
from shared.config import Settings

HERE = Path(__file__).resolve().parent
log = structlog.get_logger("billq.dashboard")


@dataclass
class State:
    """What every handler needs: settings, the pool, the broker connection, the templates."""

    settings: Settings
    pool: asyncpg.Pool
    read_only: bool
    finish_within_s: int
    templates: jinja2.Environment
    sessions: auth.Sessions = field(default_factory=auth.Sessions)
    cache: Cache = field(default_factory=Cache)
    _broker: AbstractConnection | None = None
    _broker_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def broker(self) -> AbstractConnection:
        """The broker connection, opened on first use and again after it closed."""
        from shared.amqp.connection import connect_any

        async with self._broker_lock:
            if self._broker is None or self._broker.is_closed:
                self._broker = await connect_any(self.settings.amqp_urls)
            return self._broker

    async def close(self) -> None:
        if self._broker is not None:
            await self._broker.close()
        await self.pool.close()


STATE = web.AppKey("state", State)


def templates() -> jinja2.Environment:
    from dashboard import charts, formatting

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["money"] = formatting.money
    env.filters["when"] = formatting.when
    env.filters["duration"] = formatting.duration
    env.globals["bars_svg"] = charts.bars_svg
    return env


def build_app(state: State) -> web.Application:
    from dashboard import api, pages

    token = state.settings.dashboard_token
    app = web.Application(
        middlewares=[
            auth.middleware(
                token.get_secret_value() if token else None, state.sessions, pages.unauthorized
            )
        ]
    )
    app[STATE] = state
    pages.add_routes(app)
    api.add_routes(app)
    app.router.add_static("/static/", HERE / "static")
    return app


async def warm_up(state: State) -> None:
    """Do before the first request what it would otherwise pay for: compile every template,
    import what the handlers import lazily, open the broker connection (best effort: a
    broker that is down shows on the pages, it does not stop the dashboard)."""
    import shared.amqp.dlq
    import shared.amqp.inspect
    import shared.operations
    import shared.views  # noqa: F401

    for name in state.templates.list_templates():
        state.templates.get_template(name)
    try:
        await state.broker()
    except Exception as exc:
        log.warning("dashboard.broker_unavailable", error=str(exc))


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    read_only: bool,
    finish_within_s: int,
    stop: asyncio.Event,
) -> int:
    """Serve until ``stop`` is set."""
    from shared.db.pool import create_pool

    # All four connections open before the first request: a page's reads run at once.
    pool = await create_pool(settings, min_size=4, max_size=4)
    state = State(settings, pool, read_only, finish_within_s, templates())
    await warm_up(state)
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("dashboard.started", host=host, port=port, read_only=read_only)
        await stop.wait()
    finally:
        await runner.cleanup()
        await state.close()
    log.info("dashboard.stopped")
    return 0
