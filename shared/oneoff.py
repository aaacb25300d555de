"""One-off charges: what ``POST /v1/charges`` and ``billq charge`` both run.

``create`` validates the request, then in ONE transaction records the caller's
Idempotency-Key and inserts the job (``pending``: the jobs table is the outbox) together
with the answer to replay. ``publish`` then publishes it with confirms (``mandatory``) and
marks it published; if that never happens (a crash, the broker down) the job stays
``pending`` and the next ``billq reconcile`` or ``billq distribute`` publishes it (the outbox
repair). From there a one-off is a job like any other: a worker claims it through the gate,
charges the gateway under its own key with the job's frozen parameters, and records the
charge fenced.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from aio_pika.abc import AbstractConnection

from shared.amqp.publisher import Publisher
from shared.billing import kinds
from shared.billing.money import MAX_AMOUNT_CENTS, check_currency
from shared.config import Settings
from shared.db import idempotency_repo, oneoff_repo, runs_repo
from shared.db.errors import classified
from shared.db.pool import Conn
from shared.errors import IdempotencyConflict, InvalidRequest, NotFound
from shared.gateway.amounts import to_gateway_units
from shared.messages import INT64_MAX, INT64_MIN

log = structlog.get_logger("billq.oneoff")

ENDPOINT = "POST /v1/charges"
FIELDS = ("account_id", "amount", "currency", "description")
MAX_DESCRIPTION = 1000
BILLABLE = ("active", "past_due")


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    account_id: int
    amount: int  # the currency's ISO 4217 minor units, like every billq amount
    currency: str
    description: str | None

    def fields(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "amount": self.amount,
            "currency": self.currency,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class Created:
    """The answer to a create: the first one, or its replay."""

    status: int
    body: dict[str, Any]
    replayed: bool
    job_id: int | None


def check_key(key: str | None) -> str:
    """The caller's Idempotency-Key, checked.

    Raises:
        InvalidRequest: missing, empty, too long or not printable ASCII.
    """
    if key is None or not key.strip():
        raise InvalidRequest(
            "an Idempotency-Key header is required: a unique key per charge you mean to make "
            "(retries send the same key)",
            code="idempotency_key_missing",
        )
    if len(key) > kinds.MAX_CALLER_KEY or not key.isascii() or not key.isprintable():
        raise InvalidRequest(
            f"the Idempotency-Key must be 1 to {kinds.MAX_CALLER_KEY} printable ASCII characters",
            code="idempotency_key_invalid",
        )
    return key


def _int(data: dict[str, Any], name: str, low: int, high: int) -> int:
    value = data.get(name)
    if value is None:
        raise InvalidRequest(
            f"missing required param: {name}", param=name, code="parameter_missing"
        )
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer between {low} and {high}", param=name)
    return value


def _storable(value: object) -> bool:
    """Text Postgres can store: no NUL, no lone surrogate (JSON allows both)."""
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def body_fields(data: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """The request body as an object of known fields only.

    Raises:
        InvalidRequest: not an object, or an unknown field (named).
    """
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for name in data:
        if name not in fields:
            raise InvalidRequest(
                f"received unknown parameter: {str(name)[:64]}",
                param=str(name)[:64],
                code="parameter_unknown",
            )
    return data


async def replayed(conn: Conn, caller_key: str, endpoint: str, digest: str) -> Created | None:
    """None: the key is this transaction's; else the first answer under it, replayed.

    Raises:
        IdempotencyConflict: the key was used for another request.
    """
    earlier = await idempotency_repo.begin(conn, caller_key, endpoint, digest)
    if earlier is None:
        return None
    if earlier.endpoint != endpoint or earlier.request_hash != digest:
        raise IdempotencyConflict(
            "keys for idempotent requests can only be used with the same parameters "
            "they were first used with; this key was used for another request"
        )
    return Created(earlier.status, earlier.response, True, None)


def parse(data: Any) -> ChargeRequest:
    """A request body (decoded JSON) as a ``ChargeRequest``.

    Raises:
        InvalidRequest: not an object, an unknown or missing field, or a bad value (named).
    """
    body_fields(data, FIELDS)
    account_id = _int(data, "account_id", INT64_MIN, INT64_MAX)
    amount = _int(data, "amount", 1, MAX_AMOUNT_CENTS)
    raw = data.get("currency")
    if raw is None:
        raise InvalidRequest(
            "missing required param: currency", param="currency", code="parameter_missing"
        )
    if not isinstance(raw, str):
        raise InvalidRequest("currency must be an ISO 4217 code such as EUR", param="currency")
    try:
        currency = check_currency(raw)
        to_gateway_units(amount, currency)  # sendable exactly, or refused now, not later
    except ValueError as exc:
        param = "currency" if "currency" in str(exc) else "amount"
        raise InvalidRequest(str(exc).replace("amount_cents", "amount"), param=param) from None
    description = data.get("description")
    if description is not None and not _storable(description):
        raise InvalidRequest(
            f"description must be text of at most {MAX_DESCRIPTION} characters",
            param="description",
        )
    return ChargeRequest(account_id, amount, currency, description or None)


def job_object(row: asyncpg.Record) -> dict[str, Any]:
    """A billing_jobs row (``oneoff_repo.JOB_COLUMNS``) as the API's job object."""
    period = row["kind"] == kinds.PERIOD
    charge = None
    if row["charge_id"] is not None:
        charge = {
            "id": row["charge_id"],
            "gateway_charge_id": row["gateway_charge_id"],
            "created_at": _when(row["charged_at"]),
        }
    return {
        "id": row["id"],
        "object": "job",
        "kind": row["kind"],
        "state": row["state"],
        "account_id": row["account_id"],
        "amount": row["amount_cents"],
        "currency": row["currency"],
        "description": row["description"],
        "idempotency_key": row["idempotency_key"],
        "run_id": row["run_id"],
        "period_start": row["period_start"].isoformat() if period else None,
        "period_end": row["period_end"].isoformat() if period else None,
        "dunning_attempt": row["dunning_attempt"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "decline_code": row["decline_code"],
        "created_at": _when(row["created_at"]),
        "published_at": _when(row["published_at"]),
        "finished_at": _when(row["finished_at"]),
        "charge": charge,
        "invoice": row["invoice"],
    }


def charge_object(row: asyncpg.Record) -> dict[str, Any]:
    """A charges row as the API's charge object."""
    return {
        "id": row["id"],
        "object": "charge",
        "kind": row["kind"],
        "job_id": row["job_id"],
        "account_id": row["account_id"],
        "amount": row["amount_cents"],
        "currency": row["currency"],
        "period_start": row["period_start"].isoformat() if row["kind"] == kinds.PERIOD else None,
        "idempotency_key": row["idempotency_key"],
        "gateway_charge_id": row["gateway_charge_id"],
        "created_at": _when(row["created_at"]),
    }


def _when(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


@classified
async def create(pool: asyncpg.Pool, request: ChargeRequest, caller_key: str) -> Created:
    """Create the one-off job, or answer as the first request under this key did.

    Raises:
        IdempotencyConflict: the key was used for another request.
        NotFound: no such account.
        InvalidRequest: the account may not be charged.
        DatabaseUnavailable: Postgres failed; nothing was created.
    """
    digest = kinds.request_hash(ENDPOINT, request.fields())
    async with pool.acquire() as conn, conn.transaction():
        earlier = await replayed(conn, caller_key, ENDPOINT, digest)
        if earlier is not None:
            return earlier
        account = await oneoff_repo.account_for_charge(conn, request.account_id)
        if account is None:
            raise NotFound(f"no such account: {request.account_id}", param="account_id")
        if account["status"] not in BILLABLE:
            raise InvalidRequest(
                f"account {request.account_id} is {account['status']}: it may not be charged",
                param="account_id",
                code="account_not_billable",
            )
        key = kinds.oneoff_idempotency_key(request.account_id, caller_key)
        job_id = await oneoff_repo.insert_oneoff(
            conn,
            account_id=request.account_id,
            day=dt.datetime.now(dt.UTC).date(),
            idempotency_key=key,
            amount=request.amount,
            currency=request.currency,
            payment_method=account["payment_method"],
            gateway_customer=account["gateway_customer"],
            description=request.description,
        )
        if job_id is None:
            # Only if the key's record was removed by hand: never a second job for the key.
            raise IdempotencyConflict(f"a one-off charge with gateway key {key} already exists")
        row = await oneoff_repo.job(conn, job_id)
        assert row is not None
        body = job_object(row)
        await idempotency_repo.store(conn, caller_key, 201, body, job_id)
    log.info("oneoff.created", job_id=job_id, account_id=request.account_id, idempotency_key=key)
    return Created(201, body, False, job_id)


async def open_publisher(settings: Settings) -> tuple[AbstractConnection, Publisher]:
    """A broker connection and a confirming publisher on it, the topology declared first (as
    every billq publisher does: a mandatory publish to queues not yet declared bounces).

    Raises:
        BrokerUnavailable: no broker answered.
        TopologyMismatch: the queues exist with other arguments.
    """
    from shared.amqp import topology
    from shared.amqp.connection import connect_any

    conn = await connect_any(settings.amqp_urls)
    try:
        channel = await conn.channel()
        await topology.declare(channel, settings)
        await channel.close()
    except BaseException:
        await conn.close()
        raise
    return conn, Publisher(conn, timeout=settings.publish_timeout)


async def publish(
    pool: asyncpg.Pool, publisher: Publisher, settings: Settings, job_id: int
) -> bool:
    """Publish a created job now (confirmed, mandatory) and mark it published. False when it
    could not be: it stays ``pending`` and the next ``billq distribute`` or ``reconcile``
    publishes it once it is older than this publish's confirm wait (``publish_timeout``)."""
    from shared.errors import BillqError
    from shared.operations import publish_job

    try:
        row = await oneoff_repo.outbox_row(pool, job_id)
        if row is None or row["run_id"] is not None:
            return False
        await publish_job(publisher, settings, row, None)
        await runs_repo.mark_published(pool, [job_id])
    except BillqError as exc:
        log.warning("oneoff.publish_failed", job_id=job_id, error=str(exc))
        return False
    log.info("oneoff.published", job_id=job_id)
    return True


async def publish_now(pool: asyncpg.Pool, settings: Settings, job_id: int) -> bool:
    """``publish`` on a connection of its own (the CLI twins): False when no broker answered or
    the publish failed; the job is committed, and the next ``billq distribute`` publishes it."""
    from shared.errors import BillqError

    try:
        conn, publisher = await open_publisher(settings)
    except BillqError:
        return False
    try:
        return await publish(pool, publisher, settings, job_id)
    finally:
        await publisher.close()
        await conn.close()
