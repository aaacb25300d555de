"""Refunds: what ``POST /v1/refunds`` and ``billq refund`` both run.

``create`` decides the refund under its charge's row lock — all that is left, or the part
asked for, never more than the charge minus every refund of it that succeeded or may still
succeed — and in ONE transaction inserts the refund job (``pending``: the jobs table is the
outbox) with, for the API, the caller's Idempotency-Key record and the answer to replay.
``oneoff.publish`` then publishes it like a one-off; if that never happens the next
``billq reconcile`` or ``billq distribute`` does (the outbox repair). From there a refund is
a job like any other: a worker claims it through the gate, asks the gateway's refund API under the
job's own key (``billq_refund_{charge}_{n}``) for the job's frozen amount, and records the
refund, its credit note and the job fenced, then acks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from shared.billing import kinds
from shared.billing.money import MAX_AMOUNT_CENTS
from shared.billing.refunds import RefundRefusal, decide_amount, refund_idempotency_key
from shared.db import idempotency_repo, refunds_repo
from shared.db.errors import classified
from shared.errors import IdempotencyConflict, InvalidRequest, NotFound
from shared.messages import INT64_MAX
from shared.oneoff import Created, body_fields, replayed

log = structlog.get_logger("billq.refunds")

ENDPOINT = "POST /v1/refunds"
FIELDS = ("charge_id", "amount")


@dataclass(frozen=True, slots=True)
class RefundAsk:
    charge_id: int  # charges.id, as GET /v1/accounts/{id}/charges lists it
    amount: int | None  # ISO 4217 minor units; None: all that is left

    def fields(self) -> dict[str, Any]:
        return {"charge_id": self.charge_id, "amount": self.amount}


def parse(data: Any) -> RefundAsk:
    """A request body (decoded JSON) as a ``RefundAsk``.

    Raises:
        InvalidRequest: not an object, an unknown or missing field, or a bad value (named).
    """
    data = body_fields(data, FIELDS)
    charge_id = data.get("charge_id")
    if charge_id is None:
        raise InvalidRequest(
            "missing required param: charge_id", param="charge_id", code="parameter_missing"
        )
    if not _integer(charge_id, 1, INT64_MAX):
        raise InvalidRequest(
            f"charge_id must be an integer between 1 and {INT64_MAX}", param="charge_id"
        )
    amount = data.get("amount")
    if amount is not None and not _integer(amount, 1, MAX_AMOUNT_CENTS):
        raise InvalidRequest(
            f"amount must be an integer between 1 and {MAX_AMOUNT_CENTS} (minor units)",
            param="amount",
            code="parameter_invalid_integer",
        )
    return RefundAsk(charge_id, amount)


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


# The refund job with what became of it (its refund and credit note once recorded).
REFUND_JOB = """
SELECT j.id, j.state, j.refund_of, j.account_id, j.amount_cents, j.currency,
       j.idempotency_key, j.attempts, j.last_error, j.created_at, j.finished_at,
       r.gateway_refund_id, n.number AS credit_note, i.number AS invoice
  FROM billing_jobs j
  LEFT JOIN refunds r ON r.job_id = j.id
  LEFT JOIN credit_notes n ON n.refund_id = r.id
  LEFT JOIN invoices i ON i.id = n.invoice_id
 WHERE j.id = $1 AND j.refund_of IS NOT NULL
"""


def refund_object(row: asyncpg.Record) -> dict[str, Any]:
    """A refund job (``REFUND_JOB``) as the API's refund object."""
    return {
        "id": row["id"],
        "object": "refund",
        "kind": kinds.REFUND,
        "state": row["state"],
        "charge_id": row["refund_of"],
        "account_id": row["account_id"],
        "amount": row["amount_cents"],
        "currency": row["currency"],
        "idempotency_key": row["idempotency_key"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "gateway_refund_id": row["gateway_refund_id"],
        "credit_note": row["credit_note"],
        "invoice": row["invoice"],
        "created_at": _when(row["created_at"]),
        "finished_at": _when(row["finished_at"]),
    }


def _when(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


@classified
async def get(pool: asyncpg.Pool, job_id: int) -> dict[str, Any] | None:
    """The refund object of refund job ``job_id``, or None."""
    row = await pool.fetchrow(REFUND_JOB, job_id)
    return refund_object(row) if row is not None else None


@classified
async def create(pool: asyncpg.Pool, ask: RefundAsk, caller_key: str | None) -> Created:
    """Create the refund job, or answer as the first request under ``caller_key`` did (the
    CLI passes None: each call is a new refund, its amount checked like any other).

    Raises:
        IdempotencyConflict: the key was used for another request.
        NotFound: no such charge.
        InvalidRequest: more than the charge has left (``amount_too_large``), nothing left
            (``charge_already_refunded``).
        DatabaseUnavailable: Postgres failed; nothing was created.
    """
    digest = kinds.request_hash(ENDPOINT, ask.fields())
    async with pool.acquire() as conn, conn.transaction():
        if caller_key is not None:
            earlier = await replayed(conn, caller_key, ENDPOINT, digest)
            if earlier is not None:
                return earlier
        charge = await refunds_repo.lock_charge(conn, ask.charge_id)
        if charge is None:
            raise NotFound(f"no such charge: {ask.charge_id}", param="charge_id")
        amount = decide_amount(ask.amount, charge.amount_cents, charge.held)
        if isinstance(amount, RefundRefusal):
            raise InvalidRequest(
                f"charge {charge.charge_id}: {amount.message} ({amount.code})",
                param=amount.param,
                code=amount.code,
            )
        key = refund_idempotency_key(charge.charge_id, charge.jobs + 1)
        job_id = await refunds_repo.insert_refund_job(
            conn, charge, idempotency_key=key, amount=amount, description=None
        )
        if job_id is None:
            # Only if a refund job was removed by hand: never a second job for the key.
            raise IdempotencyConflict(f"a refund with gateway key {key} already exists")
        row = await conn.fetchrow(REFUND_JOB, job_id)
        assert row is not None
        body = refund_object(row)
        if caller_key is not None:
            await idempotency_repo.store(conn, caller_key, 201, body, job_id)
    log.info("refund.created", job_id=job_id, charge_id=charge.charge_id, amount=amount, key=key)
    return Created(201, body, False, job_id)
