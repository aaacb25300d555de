"""refunds, credit notes and refund jobs: SQL beside the functions that run it.

A refund job is created under its charge's row lock (``LOCK_CHARGE``): what is left to refund
is the charge minus every refund job of it that succeeded or may still succeed, so two
concurrent requests that together exceed the charge cannot both get a job. The record step
(``RECORD_REFUND``) is one statement fenced by the claim's token, like a charge's; it adds
the refund to ``charges.refunded_cents`` (the row lock again, and a CHECK holding the sum to
the charge), writes the ``refunds`` row once (job, key and gateway refund id unique) and the
credit note on the charge's invoice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from shared.billing.audit import Refund
from shared.db.errors import classified
from shared.db.pool import Conn
from shared.errors import ActionRefused

# States in which a refund job has given, or may still give, money back.
LIVE_STATES = ("pending", "published", "processing", "retrying", "succeeded")

LOCK_CHARGE = """
SELECT c.id, c.job_id, c.account_id, c.amount_cents, c.currency, c.gateway_charge_id,
       j.period_start, j.period_end
  FROM charges c JOIN billing_jobs j ON j.id = c.job_id
 WHERE c.id = $1
   FOR NO KEY UPDATE OF c
"""

# Under the charge's lock: what its refund jobs hold, and how many it has had (the next
# refund's ordinal, part of its gateway key).
REFUND_JOBS_OF = """
SELECT coalesce(sum(amount_cents) FILTER (WHERE state = ANY($2::text[])), 0)::bigint AS held,
       count(*) AS jobs
  FROM billing_jobs WHERE refund_of = $1
"""

INSERT_REFUND_JOB = """
INSERT INTO billing_jobs (kind, run_id, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, refund_of, description)
VALUES ('refund', NULL, $1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""

RECORD_REFUND = """
WITH done AS (
    UPDATE billing_jobs j
       SET state = 'succeeded', finished_at = now(), updated_at = now(),
           locked_by = NULL, locked_until = NULL, last_error = NULL
     WHERE j.id = $1 AND j.attempts = $2 AND j.state = 'processing'
       AND j.refund_of IS NOT NULL
    RETURNING j.id, j.refund_of, j.account_id, j.amount_cents, j.currency, j.idempotency_key
), charge AS (
    UPDATE charges c SET refunded_cents = c.refunded_cents + d.amount_cents
      FROM done d WHERE c.id = d.refund_of
    RETURNING c.id, c.job_id
), refund AS (
    INSERT INTO refunds (job_id, charge_id, account_id, amount_cents, currency,
                         gateway_refund_id, idempotency_key)
    SELECT d.id, d.refund_of, d.account_id, d.amount_cents, d.currency, $3, d.idempotency_key
      FROM done d JOIN charge c ON c.id = d.refund_of
    RETURNING id, charge_id, account_id, amount_cents, currency
), invoice AS (
    UPDATE invoices i SET credited_cents = i.credited_cents + r.amount_cents
      FROM refund r JOIN charge c ON c.id = r.charge_id
     WHERE i.job_id = c.job_id
    RETURNING i.id
), note AS (
    INSERT INTO credit_notes (number, invoice_id, refund_id, account_id, amount_cents, currency)
    SELECT billq_next_credit_note_number(extract(year FROM now() AT TIME ZONE 'UTC')::int),
           (SELECT min(id) FROM invoice), r.id, r.account_id, r.amount_cents, r.currency
      FROM refund r
    RETURNING id
), event AS (
    INSERT INTO account_events (account_id, kind, reason, job_id)
    SELECT r.account_id, 'refunded',
           'refund ' || $3 || ' of charge ' || r.charge_id || ' (' || r.amount_cents || ' '
           || r.currency || ')', $1
      FROM refund r
    RETURNING id
)
SELECT count(*) FROM refund
"""

IS_REFUND_JOB = "SELECT refund_of IS NOT NULL FROM billing_jobs WHERE id = $1"

RECORDED = """
SELECT r.gateway_refund_id, r.idempotency_key, r.amount_cents, r.currency, r.job_id,
       c.gateway_charge_id
  FROM refunds r JOIN charges c ON c.id = r.charge_id
 WHERE $1::timestamptz IS NULL OR r.created_at >= $1
"""


@dataclass(frozen=True, slots=True)
class LockedCharge:
    """A charge held under its row lock while a refund of it is decided."""

    charge_id: int
    account_id: int
    amount_cents: int
    currency: str
    gateway_charge_id: str
    period_start: dt.date
    period_end: dt.date
    held: int  # refunded, or held by refund jobs that may still succeed
    jobs: int  # refund jobs it has had, whatever became of them


async def lock_charge(conn: Conn, charge_id: int) -> LockedCharge | None:
    """The charge under its row lock (inside the caller's transaction), or None."""
    row = await conn.fetchrow(LOCK_CHARGE, charge_id)
    if row is None:
        return None
    held = await conn.fetchrow(REFUND_JOBS_OF, charge_id, list(LIVE_STATES))
    assert held is not None  # an aggregate always answers one row
    return LockedCharge(
        charge_id=row["id"],
        account_id=row["account_id"],
        amount_cents=row["amount_cents"],
        currency=row["currency"],
        gateway_charge_id=row["gateway_charge_id"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        held=int(held["held"]),
        jobs=int(held["jobs"]),
    )


async def insert_refund_job(
    conn: Conn,
    charge: LockedCharge,
    *,
    idempotency_key: str,
    amount: int,
    description: str | None,
) -> int | None:
    """The refund job (``pending``: the jobs table is the outbox); None if its key exists."""
    job_id = await conn.fetchval(
        INSERT_REFUND_JOB,
        charge.account_id,
        charge.period_start,
        charge.period_end,
        idempotency_key,
        amount,
        charge.currency,
        charge.charge_id,
        description,
    )
    return int(job_id) if job_id is not None else None


@classified
async def record_refund(pool: asyncpg.Pool, job_id: int, attempts: int, refund_id: str) -> bool:
    """Record the gateway's refund for the claimed job (fenced by ``attempts``); False when
    a newer claim holds the job.

    Raises:
        DatabaseUnavailable: retry; the gateway replays the refund under the job's key.
        ActionRefused: the charge's refunds would pass the charge (never after a checked
            creation; ``billq audit`` lists the refund as refunded_not_recorded).
    """
    try:
        return bool(await pool.fetchval(RECORD_REFUND, job_id, attempts, refund_id))
    except asyncpg.CheckViolationError as exc:
        raise ActionRefused(
            f"refund {refund_id} of job {job_id} would refund more than its charge took "
            f"({exc.constraint_name}); not recorded"
        ) from None


@classified
async def is_refund_job(pool: asyncpg.Pool, job_id: int) -> bool:
    return bool(await pool.fetchval(IS_REFUND_JOB, job_id))


@classified
async def recorded(pool: asyncpg.Pool, since: dt.datetime | None) -> list[Refund]:
    """Recorded refunds (created at or after ``since``), for the audit."""
    return [
        Refund(
            refund_id=r["gateway_refund_id"],
            idempotency_key=r["idempotency_key"],
            amount=r["amount_cents"],
            currency=r["currency"],
            charge_id=r["gateway_charge_id"],
            job_id=r["job_id"],
        )
        for r in await pool.fetch(RECORDED, since)
    ]
