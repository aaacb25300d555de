"""Publish job messages with confirms and mark them published (the jobs table is the outbox)."""

from __future__ import annotations

import asyncpg

from shared.amqp import names
from shared.amqp.publisher import Publisher
from shared.config import Settings
from shared.db import runs_repo
from shared.messages import HANDOFF_HEADER, MESSAGE_TYPE, encode_job
from shared.signing import SIGNATURE_HEADER, sign


def encode_message(row: asyncpg.Record) -> bytes:
    """A billing_jobs row as its ChargeMessage body."""
    return encode_job(row)


def routing_key(row: asyncpg.Record) -> str:
    """The lane of a billing_jobs row (republished rows keep the lane they were first sent to)."""
    return names.routing_key_for_job(dunning_attempt=row["dunning_attempt"], kind=row.get("kind"))


class Outbox:
    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, settings: Settings) -> None:
        self._pool = pool
        self._publisher = publisher
        self._exchange = names.work_exchange(settings.queue_prefix)
        keys = settings.signing_key_list
        self._key = keys[0] if keys else None

    async def publish(self, rows: list[asyncpg.Record]) -> int:
        """Publish every row concurrently (one confirm window per lane), then mark them
        published."""
        if not rows:
            return 0
        by_lane: dict[str, list[asyncpg.Record]] = {}
        for row in rows:
            by_lane.setdefault(routing_key(row), []).append(row)
        for key, lane_rows in by_lane.items():
            await self._publisher.publish_many(
                self._exchange,
                key,
                [self._item(r, None) for r in lane_rows],
                message_type=MESSAGE_TYPE,
            )
        await runs_repo.mark_published(self._pool, [r["id"] for r in rows])
        return len(rows)

    def _item(
        self, row: asyncpg.Record, handoff: int | None
    ) -> tuple[bytes, str, dict[str, object] | None]:
        body = encode_message(row)
        headers: dict[str, object] = {}
        if handoff is not None:
            headers[HANDOFF_HEADER] = handoff
        if self._key is not None:
            headers[SIGNATURE_HEADER] = sign(body, self._key)
        return body, row["idempotency_key"], headers or None

    async def publish_one(self, row: asyncpg.Record, handoff: int | None = None) -> None:
        body, message_id, headers = self._item(row, handoff)
        await self._publisher.publish(
            self._exchange,
            routing_key(row),
            body,
            message_id=message_id,
            message_type=MESSAGE_TYPE,
            headers=headers,
        )
