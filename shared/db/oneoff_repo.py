"""One-off charge jobs: their creation, and the job and charge read models of the API.

A one-off job is inserted ``pending`` — the jobs table is the outbox — with the gateway
parameters frozen from the account (card, customer) and the caller's (amount, currency), in
the transaction that records the caller's Idempotency-Key.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from shared.db.errors import classified
from shared.db.pool import Conn

# Locked so a cancellation committed meanwhile cannot slip between this check and the job.
ACCOUNT = """
SELECT id, status, cancelled_at, payment_method, gateway_customer
  FROM accounts WHERE id = $1 FOR SHARE
"""

# The key is unique: a one-off whose idempotency record was lost cannot be created twice.
INSERT_ONEOFF = """
INSERT INTO billing_jobs (kind, run_id, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, payment_method, gateway_customer, description)
VALUES ('oneoff', NULL, $1, $2::date, $2::date + 1, $3, $4, $5, $6, $7, $8)
ON CONFLICT DO NOTHING
RETURNING id
"""

JOB_COLUMNS = """
SELECT j.id, j.kind, j.run_id, j.account_id, j.period_start, j.period_end, j.idempotency_key,
       j.amount_cents, j.currency, j.description, j.state, j.attempts, j.dunning_attempt,
       j.last_error, j.decline_code, j.created_at, j.published_at, j.finished_at,
       c.id AS charge_id, c.gateway_charge_id, c.created_at AS charged_at,
       i.number AS invoice
  FROM billing_jobs j
  LEFT JOIN charges c ON c.job_id = j.id
  LEFT JOIN invoices i ON i.job_id = j.id AND i.status = 'paid'
"""

GET_JOB = JOB_COLUMNS + " WHERE j.id = $1"

# What the outbox needs to publish the job.
OUTBOX_ROW = """
SELECT id, kind, account_id, period_start, idempotency_key, run_id, dunning_attempt
  FROM billing_jobs WHERE id = $1
"""

ACCOUNT_EXISTS = "SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1)"

# Newest first, keyset on the charge id. Two branches so each uses its partial index
# (period charges by (account, period), the others by (account, id)).
ACCOUNT_CHARGES = """
SELECT * FROM (
    SELECT c.id, c.kind, c.job_id, c.account_id, c.period_start, c.amount_cents, c.currency,
           c.idempotency_key, c.gateway_charge_id, c.created_at
      FROM charges c
     WHERE c.account_id = $1 AND c.kind = 'period' AND ($2::bigint IS NULL OR c.id < $2)
    UNION ALL
    SELECT c.id, c.kind, c.job_id, c.account_id, c.period_start, c.amount_cents, c.currency,
           c.idempotency_key, c.gateway_charge_id, c.created_at
      FROM charges c
     WHERE c.account_id = $1 AND c.kind <> 'period' AND ($2::bigint IS NULL OR c.id < $2)
) c
 ORDER BY c.id DESC
 LIMIT $3
"""


async def account_for_charge(conn: Conn, account_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(ACCOUNT, account_id)
    return row


async def insert_oneoff(
    conn: Conn,
    *,
    account_id: int,
    day: dt.date,
    idempotency_key: str,
    amount: int,
    currency: str,
    payment_method: str,
    gateway_customer: str | None,
    description: str | None,
) -> int | None:
    """The new job's id; None when a job with this gateway key already exists."""
    value = await conn.fetchval(
        INSERT_ONEOFF,
        account_id,
        day,
        idempotency_key,
        amount,
        currency,
        payment_method,
        gateway_customer,
        description,
    )
    return int(value) if value is not None else None


async def job(conn: Conn | asyncpg.Pool, job_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(GET_JOB, job_id)
    return row


@classified
async def get_job(pool: asyncpg.Pool, job_id: int) -> asyncpg.Record | None:
    return await job(pool, job_id)


@classified
async def outbox_row(pool: asyncpg.Pool, job_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(OUTBOX_ROW, job_id)
    return row


@classified
async def account_exists(pool: asyncpg.Pool, account_id: int) -> bool:
    return bool(await pool.fetchval(ACCOUNT_EXISTS, account_id))


@classified
async def account_charges(
    pool: asyncpg.Pool, account_id: int, before_id: int | None, limit: int
) -> list[asyncpg.Record]:
    return list(await pool.fetch(ACCOUNT_CHARGES, account_id, before_id, limit))
