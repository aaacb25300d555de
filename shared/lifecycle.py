"""Signals only set an event; a second signal forces an immediate exit."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable

EXIT_FORCED = 130


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # Second signal: leave now; unacked deliveries are redelivered by the broker.
            sys.stderr.write(f"billq: forced exit on second {signal.Signals(signum).name}\n")
            os._exit(EXIT_FORCED)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


def run(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop)`` on uvloop when available; SIGTERM/SIGINT set ``stop``."""

    async def wrapper() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        return await main(stop)

    try:
        import uvloop

        return uvloop.run(wrapper())
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(wrapper())
