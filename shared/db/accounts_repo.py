"""accounts and account_events: import, list, show, payment-method updates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from shared.billing.accounts import AccountRow
from shared.billing.periods import first_billing_at
from shared.db.errors import classified
from shared.db.ops_repo import RECORD_ACTION

# Re-importing updates what the integrator owns and never the billing state
# (next_billing_at, status, dunning), so a nightly sync cannot re-bill or un-suspend.
# Status changes are a separate statement (APPLY_STATUS) with their own events.
UPSERT = """
INSERT INTO accounts (id, name, email, amount_cents, currency, billing_interval,
                      billing_anchor_day, next_billing_at, status, payment_method,
                      gateway_customer, cancelled_at, cancelled_by)
SELECT u.*, CASE WHEN u.status = 'cancelled' THEN now() END,
       CASE WHEN u.status = 'cancelled' THEN 'accounts import' END
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

# Who cancelled, in accounts.cancelled_by, for an import's cancellations; an operator's is
# their actor (`cli:USER`, `dashboard:LOGIN`).
IMPORT = "accounts import"

# A row's status applies to an existing account only where the integrator owns it:
# `cancelled` cancels (from any state), `active` reactivates an account the integrator
# cancelled (an import row). An operator's cancel (`billq accounts cancel`) is sticky: a
# nightly sync that always says `active` must not bill a customer who cancelled, so such rows
# are returned as 'kept_cancelled' and only `billq accounts reactivate` ($4 true, the operator
# as $5) undoes it — also withdrawing a cancellation scheduled for later. billq's own dunning
# states (past_due, suspended) are never overwritten with `active`. A reactivated account is
# billed from its next anchored date on or after today, never for the months it was
# cancelled; its dunning restarts from scratch.
APPLY_STATUS = """
WITH wanted AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS w(id, status, resume_at)
), before AS (
    SELECT a.id, a.status, a.cancelled_at, a.cancelled_by
      FROM accounts a JOIN wanted w ON w.id = a.id FOR UPDATE OF a
), kept AS (
    SELECT b.id, b.cancelled_at, b.cancelled_by
      FROM before b JOIN wanted w ON w.id = b.id
     WHERE w.status = 'active' AND b.status = 'cancelled' AND NOT $4::bool
       AND b.cancelled_by IS NOT NULL AND b.cancelled_by <> 'accounts import'
), changed AS (
    UPDATE accounts a
       SET status = CASE WHEN w.status = 'active' AND b.status <> 'cancelled' THEN a.status
                         ELSE w.status END,
           cancelled_at = CASE WHEN w.status = 'cancelled' THEN now() END,
           cancelled_by = CASE WHEN w.status = 'cancelled'
                               THEN coalesce(b.cancelled_by, $5) END,
           next_billing_at = CASE WHEN w.status = 'active' AND b.status = 'cancelled'
                                  THEN greatest(a.next_billing_at, w.resume_at)
                                  ELSE a.next_billing_at END,
           dunning_attempt = CASE WHEN w.status = 'active' AND b.status = 'cancelled' THEN 0
                                  ELSE a.dunning_attempt END,
           -- as `accounts cancel` does; a reactivation starts afresh
           dunning_next_at = CASE WHEN w.status = 'active' AND b.status <> 'cancelled'
                                  THEN a.dunning_next_at END,
           first_declined_at = CASE WHEN w.status = 'active' AND b.status = 'cancelled' THEN NULL
                                    ELSE a.first_declined_at END,
           updated_at = now()
      FROM wanted w JOIN before b ON b.id = w.id
     WHERE a.id = w.id
       AND ((w.status = 'cancelled' AND b.status <> 'cancelled')
            OR (w.status = 'active' AND b.status = 'cancelled'
                AND NOT EXISTS (SELECT 1 FROM kept k WHERE k.id = b.id))
            OR (w.status = 'active' AND $4::bool AND b.cancelled_at IS NOT NULL))
    RETURNING a.id, a.status, a.next_billing_at
), events AS (
    INSERT INTO account_events (account_id, kind, from_status, to_status, reason)
    SELECT c.id, CASE WHEN c.status = 'cancelled' THEN 'cancelled' ELSE 'reactivated' END,
           b.status, c.status,
           CASE WHEN $4::bool THEN 'reactivated by operator ' || $5 ELSE $5 END
      FROM changed c JOIN before b ON b.id = c.id
)
SELECT id, status, next_billing_at, NULL::timestamptz AS cancelled_at, NULL::text AS cancelled_by
  FROM changed
UNION ALL
SELECT id, 'kept_cancelled', NULL, cancelled_at, cancelled_by FROM kept
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
class KeptCancelled:
    """An import row said `active` for an account an operator cancelled: left cancelled."""

    account_id: int
    cancelled_at: dt.datetime | None
    cancelled_by: str


@dataclass(frozen=True, slots=True)
class ImportCounts:
    inserted: int
    updated: int
    cancelled: int
    reactivated: int
    changed: int  # rows inserted, updated or with a status change (each counted once)
    kept_cancelled: tuple[KeptCancelled, ...] = ()


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
        False,
        IMPORT,
    )
    kept = tuple(
        KeptCancelled(r["id"], r["cancelled_at"], r["cancelled_by"])
        for r in result
        if r["status"] == "kept_cancelled"
    )
    applied = [r for r in result if r["status"] != "kept_cancelled"]
    cancelled = sum(1 for r in applied if r["status"] == "cancelled")
    return ImportCounts(
        inserted=inserted,
        updated=updated,
        cancelled=cancelled,
        reactivated=len(applied) - cancelled,
        changed=len(touched | {r["id"] for r in applied}),
        kept_cancelled=kept,
    )


@classified
async def reactivate(
    pool: asyncpg.Pool, account_id: int, actor: str, *, today: dt.date
) -> tuple[bool, asyncpg.Record | None]:
    """`billq accounts reactivate`: undo any cancel (an operator's too) or withdraw one that
    is scheduled. (account exists, its row after — None when there was nothing to undo);
    recorded in ``operator_actions``."""
    async with pool.acquire() as conn, conn.transaction():
        account = await conn.fetchrow(SHAPE, account_id)
        if account is None:
            return False, None
        resume = first_billing_at(today, account["billing_interval"], account["billing_anchor_day"])
        done = await conn.fetchrow(APPLY_STATUS, [account_id], ["active"], [resume], True, actor)
        await conn.execute(
            RECORD_ACTION,
            actor,
            "accounts reactivate",
            f"account {account_id}",
            f"{account['status']} → {done['status']}" if done else "nothing to undo",
        )
    return True, done


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
       SET cancelled_at = $2, cancelled_by = $3, updated_at = now(),
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


SHAPE = """
SELECT status, billing_interval, billing_anchor_day FROM accounts WHERE id = $1 FOR UPDATE
"""


@classified
async def cancel(
    pool: asyncpg.Pool, account_id: int, at: dt.datetime, actor: str
) -> asyncpg.Record | None:
    """`billq accounts cancel`: (status before, after), or None for no such account. The
    cancel is the operator's (``cancelled_by``), so an import cannot undo it."""
    async with pool.acquire() as conn, conn.transaction():
        row: asyncpg.Record | None = await conn.fetchrow(CANCEL, account_id, at, actor)
        if row is not None:
            await conn.execute(
                RECORD_ACTION,
                actor,
                "accounts cancel",
                f"account {account_id}",
                f"effective {at.isoformat()}; {row['before']} → {row['after']}",
            )
    return row


async def apply_due_cancellations(pool: asyncpg.Pool) -> None:
    await pool.execute(APPLY_DUE_CANCELLATIONS)
