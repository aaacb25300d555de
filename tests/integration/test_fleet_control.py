"""The fleet's control exchange in-process: every listening worker of the prefix gets the
restart command, a worker of another prefix does not, and nobody listening is said so."""

from __future__ import annotations

import asyncio
import contextlib
import functools

import aio_pika
import asyncpg
import pytest
import testkit

from shared.amqp import control
from shared.amqp.connection import connect_any
from shared.config import Settings
from worker.control import ControlListener

pytestmark = pytest.mark.integration


async def test_a_restart_reaches_every_listener_of_the_prefix_and_no_other(
    settings: Settings,
) -> None:
    other = settings.model_copy(update={"queue_prefix": testkit.unique("bqt")})
    got: list[tuple[str, str]] = []
    stop = asyncio.Event()
    listeners = [
        (
            name,
            ControlListener(s, functools.partial(lambda n, reason: got.append((n, reason)), name)),
        )
        for name, s in (("a", settings), ("b", settings), ("other", other))
    ]
    tasks = [asyncio.create_task(li.run(stop)) for _, li in listeners]
    conn = await connect_any(settings.amqp_urls)
    try:
        for _, li in listeners:
            await asyncio.wait_for(li.listening.wait(), timeout=30)
        # A body that is not a command is ignored, never fatal.
        channel = await conn.channel()
        exchange = await control.declare_exchange(channel, settings.queue_prefix)
        await exchange.publish(aio_pika.Message(b"not json"), routing_key="")
        assert await control.publish_restart(conn, settings, by="test")

        async def both_told() -> bool:
            return len(got) >= 2

        await testkit.wait_until(both_told, timeout=30, interval=0.05)
    finally:
        await conn.close()
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=10)
        await testkit.delete_topology(other)
    assert sorted(name for name, _ in got) == ["a", "b"]
    assert all("billq workers restart" in reason and "test" in reason for _, reason in got)


async def test_billq_workers_restart_tells_the_listeners_and_records_who_asked(
    settings: Settings, db: asyncpg.Connection
) -> None:
    env = testkit.env_for(settings)
    alone = testkit.billq("workers", "restart", env=env)
    assert "no worker" in alone.stdout and "nothing to restart" in alone.stdout

    got: list[str] = []
    stop = asyncio.Event()
    listener = ControlListener(settings, got.append)
    task = asyncio.create_task(listener.run(stop))
    try:
        await asyncio.wait_for(listener.listening.wait(), timeout=30)
        sent = testkit.billq("workers", "restart", env=env)
        assert "restart sent" in sent.stdout
        await testkit.wait_until(lambda: _true(bool(got)), timeout=30, interval=0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert len(got) == 1 and "fleet restart requested by cli" in got[0]
    actions = await db.fetch(
        "SELECT actor, target, outcome FROM operator_actions WHERE action = 'workers.restart'"
        " ORDER BY id"
    )
    assert [(a["target"], a["outcome"]) for a in actions] == [
        (settings.queue_prefix, "no worker listening"),
        (settings.queue_prefix, "sent"),
    ]
    assert all(a["actor"].startswith("cli") for a in actions)


async def _true(value: bool) -> bool:
    return value
