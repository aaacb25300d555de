"""``billq workers restart``: the fleet restart (Laravel's ``queue:restart``).

The command only publishes; each worker's listener (worker/control.py) does the restart.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass

import asyncpg
from aio_pika.abc import AbstractConnection

from shared.config import Settings


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli"


def workers_restart(args: argparse.Namespace, settings: Settings) -> int:
    from shared import operations
    from shared.amqp import control
    from shared.amqp.connection import connect_any
    from shared.db.pool import create_pool

    async def main(pool: asyncpg.Pool, conn: AbstractConnection) -> bool:
        sent = await control.publish_restart(conn, settings, by=actor())
        outcome = "sent" if sent else "no worker listening"
        await operations.record_action(
            pool, actor(), "workers.restart", settings.queue_prefix, outcome
        )
        return sent

    async def run() -> bool:
        pool = await create_pool(settings, min_size=1, max_size=1)
        try:
            conn = await connect_any(settings.amqp_urls)
            try:
                return await main(pool, conn)
            finally:
                await conn.close()
        finally:
            await pool.close()

    if asyncio.run(run()):
        print(
            f"restart sent to every worker of prefix {settings.queue_prefix!r}: each finishes "
            "its in-flight charges and exits 3"
        )
    else:
        print(f"no worker of prefix {settings.queue_prefix!r} is listening: nothing to restart")
    return 0
