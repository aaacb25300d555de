"""The fleet's control channel: one fanout exchange per prefix, one private queue per worker.

``billq workers restart`` publishes a command to ``{prefix}.control``; every worker of the
prefix, on every host, has bound an exclusive auto-delete queue to it, so each one gets its
own copy without anyone listing hosts (Laravel's ``queue:restart``). A worker that is not
connected when the command is published misses it: the command is for the fleet running now.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from shared.amqp import names
from shared.amqp.publisher import Publisher
from shared.config import Settings
from shared.errors import Unroutable

RESTART = "restart"
COMMAND_TYPE = "billq.control"


async def declare_exchange(channel: AbstractChannel, prefix: str) -> AbstractExchange:
    return await channel.declare_exchange(
        names.control_exchange(prefix), aio_pika.ExchangeType.FANOUT, durable=True
    )


def command_body(command: str, **extra: Any) -> bytes:
    return json.dumps(
        {
            "command": command,
            "id": uuid.uuid4().hex,
            "issued_at": dt.datetime.now(dt.UTC).isoformat(),
            **extra,
        }
    ).encode()


def parse_command(body: bytes) -> dict[str, Any] | None:
    """The command, or None for a body that is not one (ignored, never fatal)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        return None
    return data


async def publish_restart(conn: AbstractConnection, settings: Settings, *, by: str) -> bool:
    """Tell every listening worker to finish its in-flight charges and exit 3.

    Returns False when no worker of this prefix is listening (nothing to restart).

    Raises:
        PublishFailed: the broker did not confirm the command.
    """
    channel = await conn.channel()
    try:
        await declare_exchange(channel, settings.queue_prefix)
    finally:
        await channel.close()
    publisher = Publisher(conn, timeout=settings.publish_timeout)
    try:
        await publisher.publish(
            names.control_exchange(settings.queue_prefix),
            "",
            command_body(RESTART, by=by),
            message_type=COMMAND_TYPE,
        )
    except Unroutable:
        return False  # a fanout with no queue bound: no worker is connected
    finally:
        await publisher.close()
    return True
