"""Read, replay and purge dead letters without the management plugin.

Reading uses ``basic.get`` without auto-ack on a private channel and requeues what it
read when the channel closes, so listing never loses a message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from shared.amqp import names
from shared.amqp.publisher import Publisher
from shared.config import Settings

ID_HEADER = "x-billq-dead-id"
ERROR_HEADERS = ("x-billq-error-class", "x-billq-error", ID_HEADER)


def letter_id(message: AbstractIncomingMessage) -> str:
    """The id billq stamped when dead-lettering, or a digest for broker-dead-lettered ones."""
    headers = message.headers or {}
    stamped = headers.get(ID_HEADER)
    if isinstance(stamped, str):
        return stamped
    digest = hashlib.sha1(message.body + (message.message_id or "").encode(), usedforsecurity=False)
    return digest.hexdigest()[:12]


@dataclass
class DeadLetter:
    id: str
    error_class: str
    error: str
    message_id: str | None
    job_id: int | None
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    lane: names.Lane = "bulk"

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "error_class": self.error_class,
            "error": self.error,
            "message_id": self.message_id,
            "job_id": self.job_id,
            "lane": self.lane,
        }


def _job_id(body: bytes) -> int | None:
    import orjson

    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = data.get("job_id") if isinstance(data, dict) else None
    return value if isinstance(value, int) else None


def _letter(message: AbstractIncomingMessage) -> DeadLetter:
    headers = dict(message.headers or {})
    deaths = headers.get("x-death")
    broker_reason = ""
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        broker_reason = str(deaths[0].get("reason", ""))
    return DeadLetter(
        id=letter_id(message),
        error_class=str(headers.get("x-billq-error-class") or f"broker:{broker_reason or '?'}"),
        error=str(headers.get("x-billq-error") or f"dead-lettered by the broker ({broker_reason})"),
        message_id=message.message_id,
        job_id=_job_id(message.body),
        body=message.body,
        headers=headers,
        # The routing key it was dead-lettered with: the worker's copy and the broker's
        # (no dead-letter routing key on the lane queues) both keep the lane's key.
        lane=names.lane_of_routing_key(message.routing_key),
    )


async def read(conn: AbstractConnection, settings: Settings, limit: int) -> list[DeadLetter]:
    """Up to ``limit`` dead letters, left in the queue."""
    channel = await conn.channel()
    try:
        queue = await channel.declare_queue(
            names.dead_letter_queue(settings.queue_prefix), passive=True
        )
        out = []
        for _ in range(limit):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            out.append(_letter(message))
        return out
    finally:
        await channel.close()  # requeues everything read


async def replay(
    conn: AbstractConnection, settings: Settings, ids: set[str] | None
) -> list[DeadLetter]:
    """Republish the chosen dead letters (all when ``ids`` is None) to the work exchange on
    the lane each came from, confirmed, then remove them from the dead-letter queue."""
    publisher = Publisher(conn, timeout=settings.publish_timeout)
    channel = await conn.channel()
    replayed: list[DeadLetter] = []
    try:
        queue = await channel.declare_queue(
            names.dead_letter_queue(settings.queue_prefix), passive=True
        )
        while True:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            letter = _letter(message)
            if ids is not None and letter.id not in ids:
                continue  # left unacked: requeued when the channel closes
            headers = {k: v for k, v in letter.headers.items() if k not in ERROR_HEADERS}
            headers.pop("x-death", None)
            headers["x-billq-replayed-from"] = letter.id
            await publisher.publish(
                names.work_exchange(settings.queue_prefix),
                names.lane_routing_key(letter.lane),
                message.body,
                message_id=message.message_id,
                message_type=message.type,
                headers=headers,
                content_type=message.content_type or "application/json",
            )
            await message.ack()
            replayed.append(letter)
    finally:
        await channel.close()
        await publisher.close()
    return replayed


async def purge(conn: AbstractConnection, settings: Settings) -> int:
    channel = await conn.channel()
    try:
        queue = await channel.declare_queue(
            names.dead_letter_queue(settings.queue_prefix), passive=True
        )
        result = await queue.purge()
        return int(getattr(result, "message_count", 0) or 0)
    finally:
        await channel.close()


def new_letter_id() -> str:
    import uuid

    return uuid.uuid4().hex[:12]
