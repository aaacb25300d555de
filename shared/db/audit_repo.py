"""SQL for ``billq audit``: the recorded side, and recording what the gateway took."""

from __future__ import annotations

import datetime as dt

import asyncpg

from shared.billing.audit import Recorded
from shared.db.errors import classified

RECORDED = """
SELECT gateway_charge_id, kind, account_id, period_start, idempotency_key, job_id
  FROM charges
 WHERE $1::timestamptz IS NULL OR created_at >= $1
"""

# The job that owns the key, taken (fenced) from whatever state it is in, so the normal
# record path lands the charge: charge row, invoice paid, job succeeded, account advanced.
TAKE_BY_KEY = """
UPDATE billing_jobs
   SET state = 'processing', attempts = attempts + 1, locked_by = 'audit',
       locked_until = now() + interval '60 seconds', updated_at = now(),
       last_error = left('recorded by audit from the gateway; was: '
                         || state || coalesce(': ' || last_error, ''), 1000)
 WHERE idempotency_key = $1 AND state <> 'succeeded'
   AND (state <> 'processing' OR locked_until < now())
RETURNING id, attempts
"""

# No job holds the key (e.g. the database was restored from before the job existed): give
# the charge a job of an audit run, then record it like any other.
ADOPT = """
WITH acct AS (
    SELECT id, payment_method, gateway_customer FROM accounts WHERE id = $1
), run AS (
    INSERT INTO billing_runs (as_of, state, finished_at, error)
    SELECT now(), 'completed', now(), 'audit: charge taken at the gateway, adopted'
     WHERE EXISTS (SELECT 1 FROM acct)
    RETURNING id
)
INSERT INTO billing_jobs (run_id, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, state, attempts, locked_by, locked_until,
                          payment_method, gateway_customer, started_at)
SELECT run.id, $1, $2, $3, $4, $5, $6, 'processing', 1, 'audit', now() + interval '60 seconds',
       acct.payment_method, acct.gateway_customer, now()
  FROM run, acct
ON CONFLICT DO NOTHING
RETURNING id, attempts
"""

# The same for a one-off charge: a job of its own (no run), its parameters from the gateway.
ADOPT_ONEOFF = """
INSERT INTO billing_jobs (kind, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, state, attempts, locked_by, locked_until,
                          payment_method, gateway_customer, started_at, description)
SELECT 'oneoff', a.id, (now() AT TIME ZONE 'UTC')::date, (now() AT TIME ZONE 'UTC')::date + 1,
       $2, $3, $4, 'processing', 1, 'audit', now() + interval '60 seconds',
       a.payment_method, a.gateway_customer, now(), 'adopted by audit: taken at the gateway'
  FROM accounts a WHERE a.id = $1
ON CONFLICT DO NOTHING
RETURNING id, attempts
"""

ACCOUNT_PERIOD = """
SELECT billing_interval, billing_anchor_day FROM accounts WHERE id = $1
"""


@classified
async def recorded(pool: asyncpg.Pool, since: dt.datetime | None) -> list[Recorded]:
    return [
        Recorded(
            charge_id=r["gateway_charge_id"],
            account_id=r["account_id"],
            period_start=r["period_start"].isoformat(),
            idempotency_key=r["idempotency_key"],
            job_id=r["job_id"],
            kind=r["kind"],
        )
        for r in await pool.fetch(RECORDED, since)
    ]


@classified
async def take_by_key(pool: asyncpg.Pool, key: str) -> tuple[int, int] | None:
    row = await pool.fetchrow(TAKE_BY_KEY, key)
    return (int(row["id"]), int(row["attempts"])) if row else None


@classified
async def account_period(pool: asyncpg.Pool, account_id: int) -> tuple[str, int] | None:
    row = await pool.fetchrow(ACCOUNT_PERIOD, account_id)
    return (str(row["billing_interval"]), int(row["billing_anchor_day"])) if row else None


@classified
async def adopt(
    pool: asyncpg.Pool,
    account_id: int,
    period_start: dt.date,
    period_end: dt.date,
    key: str,
    amount: int,
    currency: str,
) -> tuple[int, int] | None:
    row = await pool.fetchrow(ADOPT, account_id, period_start, period_end, key, amount, currency)
    return (int(row["id"]), int(row["attempts"])) if row else None


@classified
async def adopt_oneoff(
    pool: asyncpg.Pool, account_id: int, key: str, amount: int, currency: str
) -> tuple[int, int] | None:
    row = await pool.fetchrow(ADOPT_ONEOFF, account_id, key, amount, currency)
    return (int(row["id"]), int(row["attempts"])) if row else None
