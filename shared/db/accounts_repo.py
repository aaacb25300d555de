"""accounts and account_events: import, list, show, payment-method updates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from shared.billing.accounts import AccountRow
from shared.billing.periods import first_billing_at
from shared.db.errors import classified

# Re-importing updates what the integrator owns and never the billing state
# (next_billing_at, status, dunning), so a nightly sync cannot re-bill or un-suspend.
# Status changes are a separate statement (APPLY_STATUS) with their own events.
UPSERT = """
INSERT INTO accounts (id, name, email, amount_cents, currency, billing_interval,
                      billing_anchor_day, next_billing_at, status, payment_method,
                      gateway_customer, cancelled_at)
SELECT u.*, CASE WHEN u.status = 'cancelled' THEN now() END
  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[],
              $7::smallint[], $8::timestamptz[], $9::text[], $10::text[], $11::text[])
       AS u(id, name, email, amount_cents, currency, billing_interval, billing_anchor_day,
            next_billing_at, status, payment_method, gateway_customer)
ON CONFLICT (id) DO UPDATE SET
    name = EXCLUDED.name, email = EXCLUDED.email, amount_cents = EXCLUDED.amount_cents,
    currency = EXCLUDED.currency, billing_interval = EXCLUDED.billing_interval,
    billing_anchor_day = EXCLUDED.billing_anchor_day,
    payment_method = EXCLUDED.payment_method, gateway_customer = EXCLUDED.gateway_customer,
    updated_at = now()
 WHERE (accounts.name, accounts.email, accounts.amount_cents, accounts.currency,
        accounts.billing_interval, accounts.billing_anchor_day, accounts.payment_method,
        accounts.gateway_customer)
       IS DISTINCT FROM
       (EXCLUDED.name, EXCLUDED.email, EXCLUDED.amount_cents, EXCLUDED.currency,
        EXCLUDED.billing_interval, EXCLUDED.billing_anchor_day, EXCLUDED.payment_method,
        EXCLUDED.gateway_customer)
RETURNING id, (xmax = 0) AS inserted
"""

# A row's status applies to an existing account only where the integrator owns it:
# `cancelled` cancels (from any state), `active` reactivates a cancelled account. billq's own
# dunning states (past_due, suspended) are never overwritten with `active`. A reactivated
# account is billed from its next anchored date on or after today, never for the months it
# was cancelled; its dunning restarts from scratch.
APPLY_STATUS = """
WITH wanted AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS w(id, status, resume_at)
), before AS (
    SELECT a.id, a.status FROM accounts a JOIN wanted w ON w.id = a.id FOR UPDATE OF a
), changed AS (
    UPDATE accounts a
       SET status = w.status,
           cancelled_at = CASE WHEN w.status = 'cancelled' THEN now() END,
           next_billing_at = CASE WHEN w.status = 'active'
                                  THEN greatest(a.next_billing_at, w.resume_at)
                                  ELSE a.next_billing_at END,
           dunning_attempt = CASE WHEN w.status = 'active' THEN 0 ELSE a.dunning_attempt END,
           dunning_next_at = NULL,  -- as `accounts cancel` does; a reactivation starts afresh
           first_declined_at = CASE WHEN w.status = 'active' THEN NULL
                                    ELSE a.first_declined_at END,
           updated_at = now()
      FROM wanted w JOIN before b ON b.id = w.id
     WHERE a.id = w.id
       AND ((w.status = 'cancelled' AND b.status <> 'cancelled')
            OR (w.status = 'active' AND b.status = 'cancelled'))
    RETURNING a.id, a.status
), events AS (
    INSERT INTO account_events (account_id, kind, from_status, to_status, reason)
    SELECT c.id, CASE WHEN c.status = 'cancelled' THEN 'cancelled' ELSE 'reactivated' END,
           b.status, c.status, 'accounts import'
      FROM changed c JOIN before b ON b.id = c.id
)
SELECT id, status FROM changed
"""

LIST = """
SELECT id, name, email, amount_cents, currency, billing_interval, billing_anchor_day,
       next_billing_at, status, gateway_customer, dunning_attempt, dunning_next_at
  FROM accounts
 WHERE ($1::text IS NULL OR status = $1)
   AND ($2::timestamptz IS NULL OR next_billing_at < $2)
 ORDER BY id
 LIMIT $3
"""

GET = """
SELECT id, name, email, amount_cents, currency, billing_interval, billing_anchor_day,
       next_billing_at, status, gateway_customer, dunning_attempt, dunning_next_at,
       first_declined_at, created_at, updated_at
  FROM accounts WHERE id = $1
"""

EVENTS = """
SELECT at, kind, from_status, to_status, reason, job_id
  FROM account_events WHERE account_id = $1 ORDER BY at, id
"""

# A new card on a past-due or suspended account: retry the unpaid period at the next run.
UPDATE_PAYMENT_METHOD = """
WITH before AS (SELECT id, status FROM accounts WHERE id = $1 FOR UPDATE),
upd AS (
    UPDATE accounts a
       SET payment_method = $2, updated_at = now(),
           status = CASE WHEN a.status IN ('past_due', 'suspended') THEN 'past_due'
                         ELSE a.status END,
           dunning_next_at = CASE WHEN a.status IN ('past_due', 'suspended') THEN now()
                                  ELSE a.dunning_next_at END,
           dunning_attempt = CASE WHEN a.status = 'suspended' THEN a.dunning_attempt + 1
                                  ELSE a.dunning_attempt END
      FROM before b WHERE a.id = b.id
    RETURNING a.id, a.status
), event AS (
    INSERT INTO account_events (account_id, kind, from_status, to_status, reason)
    SELECT b.id, 'payment_method_updated', b.status, u.status, 'payment method replaced'
      FROM before b JOIN upd u ON u.id = b.id
)
SELECT b.status AS before, u.status AS after FROM before b JOIN upd u ON u.id = b.id
"""


@dataclass(frozen=True, slots=True)
class ImportCounts:
    inserted: int
    updated: int
    cancelled: int
    reactivated: int
    changed: int  # rows inserted, updated or with a status change (each counted once)


@classified
async def import_rows(
    conn: asyncpg.Connection, rows: Sequence[AccountRow], *, today: dt.date
) -> ImportCounts:
    """Upsert the rows, then apply the statuses they name; run inside one transaction."""
    inserted, updated, touched = await _upsert(conn, rows)
    given = [r for r in rows if r.status_given]
    result = await conn.fetch(
        APPLY_STATUS,
        [r.id for r in given],
        [r.status for r in given],
        [first_billing_at(today, r.billing_interval, r.billing_anchor_day) for r in given],
    )
    cancelled = sum(1 for r in result if r["status"] == "cancelled")
    return ImportCounts(
        inserted=inserted,
        updated=updated,
        cancelled=cancelled,
        reactivated=len(result) - cancelled,
        changed=len(touched | {r["id"] for r in result}),
    )


async def _upsert(
    conn: asyncpg.Connection, rows: Sequence[AccountRow]
) -> tuple[int, int, set[int]]:
    """(inserted, updated, their ids) — unchanged rows count as neither."""
    result = await conn.fetch(
        UPSERT,
        [r.id for r in rows],
        [r.name for r in rows],
        [r.email for r in rows],
        [r.amount_cents for r in rows],
        [r.currency for r in rows],
        [r.billing_interval for r in rows],
        [r.billing_anchor_day for r in rows],
        [r.next_billing_at for r in rows],
        [r.status for r in rows],
        [r.payment_method for r in rows],
        [r.gateway_customer for r in rows],
    )
    inserted = sum(1 for r in result if r["inserted"])
    return inserted, len(result) - inserted, {r["id"] for r in result}


async def list_accounts(
    pool: asyncpg.Pool, status: str | None, due_before: dt.datetime | None, limit: int
) -> list[asyncpg.Record]:
    return list(await pool.fetch(LIST, status, due_before, limit))


async def get(pool: asyncpg.Pool, account_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(GET, account_id)
    return row


async def events(pool: asyncpg.Pool, account_id: int) -> list[asyncpg.Record]:
    return list(await pool.fetch(EVENTS, account_id))


async def update_payment_method(
    pool: asyncpg.Pool, account_id: int, payment_method: str
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        UPDATE_PAYMENT_METHOD, account_id, payment_method
    )
    return row


# Effective at $2: no period that starts at or after it is billed (the claim's gate checks
# cancelled_at too). Already effective → status 'cancelled' now; later → the account stays
# billable for the periods that start before it.
CANCEL = """
WITH before AS (SELECT id, status FROM accounts WHERE id = $1 FOR UPDATE),
upd AS (
    UPDATE accounts a
       SET cancelled_at = $2, updated_at = now(),
           status = CASE WHEN $2 <= now() THEN 'cancelled' ELSE a.status END,
           dunning_next_at = CASE WHEN $2 <= now() THEN NULL ELSE a.dunning_next_at END
      FROM before b WHERE a.id = b.id
    RETURNING a.id, a.status
), event AS (
    INSERT INTO account_events (account_id, kind, from_status, to_status, reason)
    SELECT b.id, 'cancelled', b.status, u.status, 'cancelled by operator, effective ' || $2::text
      FROM before b JOIN upd u ON u.id = b.id
)
SELECT b.status AS before, u.status AS after FROM before b JOIN upd u ON u.id = b.id
"""

# A cancellation whose time has come.
APPLY_DUE_CANCELLATIONS = """
UPDATE accounts SET status = 'cancelled', updated_at = now(), dunning_next_at = NULL
 WHERE cancelled_at <= now() AND status <> 'cancelled'
"""


async def cancel(pool: asyncpg.Pool, account_id: int, at: dt.datetime) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(CANCEL, account_id, at)
    return row


async def apply_due_cancellations(pool: asyncpg.Pool) -> None:
    await pool.execute(APPLY_DUE_CANCELLATIONS)
