"""Listen on the fleet's control exchange; a restart command recycles this worker.

Kept apart from the consumer on purpose: its own connection and channel, so the consumer's
reconnect loop and batching know nothing of it. On ``restart`` it calls ``on_restart`` —
the heartbeat's ``recycle``, which stops taking work, lets in-flight charges finish and ack,
and exits 3 for supervisor/systemd/Kubernetes to start the worker again (with new code).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from shared.amqp import control
from shared.amqp.connection import connect_with_retry
from shared.config import Settings

log = structlog.get_logger("billq.worker")


class ControlListener:
    def __init__(self, settings: Settings, on_restart: Callable[[str], None]) -> None:
        self._settings = settings
        self._on_restart = on_restart
        self.listening = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set, reconnecting whenever the connection is lost."""
        while not stop.is_set():
            conn = await connect_with_retry(self._settings.amqp_urls, stop=stop)
            if conn is None:
                return
            try:
                await self._listen(conn, stop)
            except Exception as exc:
                log.warning("control.connection_lost", error=type(exc).__name__)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await conn.close()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def _listen(self, conn: AbstractConnection, stop: asyncio.Event) -> None:
        channel = await conn.channel()
        exchange = await control.declare_exchange(channel, self._settings.queue_prefix)
        # Server-named, exclusive, auto-delete: private to this connection, gone with it.
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        await queue.consume(self._on_command, no_ack=True)
        self.listening.set()
        log.info("control.listening", exchange=exchange.name)
        while not stop.is_set() and not (conn.is_closed or channel.is_closed):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def _on_command(self, message: AbstractIncomingMessage) -> None:
        command = control.parse_command(message.body)
        if command is None:
            log.warning("control.ignored", reason="not a billq control command")
            return
        if command["command"] == control.RESTART:
            by = command.get("by") or "unknown"
            log.info("control.restart", command_id=command.get("id"), by=by)
            self._on_restart(f"fleet restart requested by {by} (billq workers restart)")
        else:
            log.warning("control.ignored", command=command["command"])
