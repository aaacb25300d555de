"""Read models for finance: runs, run reports, invoices."""

from __future__ import annotations

import asyncpg

# Counts from the runs' summary rows (migration 0009): no scan of their jobs.
RUNS = """
SELECT r.id, r.as_of, r.state, r.started_at, r.finished_at, r.due, r.published,
       coalesce(c.total, 0)::bigint AS total, coalesce(c.succeeded, 0)::bigint AS succeeded,
       coalesce(c.declined, 0)::bigint AS declined, coalesce(c.dead, 0)::bigint AS dead,
       coalesce(c.already_paid, 0)::bigint AS already_paid,
       r.blocked,
       coalesce(c.in_flight, 0)::bigint AS in_flight,
       -- The run hook of its latest settlement: pending, retrying, delivered, failed or
       -- skipped (settled before any process had a webhook URL).
       CASE WHEN h.state = 'pending' AND h.attempts > 0 THEN 'retrying' ELSE h.state END
           AS hook,
       h.event_id AS hook_event_id, h.attempts AS hook_attempts, h.last_error AS hook_error
  FROM billing_runs r
  LEFT JOIN LATERAL (
      SELECT sum(s.n) AS total,
             sum(s.n) FILTER (WHERE s.key = 'succeeded') AS succeeded,
             sum(s.n) FILTER (WHERE s.key = 'failed') AS declined,
             sum(s.n) FILTER (WHERE s.key = 'dead') AS dead,
             sum(s.n) FILTER (WHERE s.key = 'already_paid') AS already_paid,
             sum(s.n) FILTER (WHERE s.key IN ('pending', 'published', 'processing', 'retrying'))
                 AS in_flight
        FROM run_summary_totals s WHERE s.run_id = r.id AND s.kind = 'state') c ON true
  LEFT JOIN LATERAL (SELECT e.event_id, e.state, e.attempts, e.last_error
                       FROM run_hook_events e WHERE e.run_id = r.id
                      ORDER BY e.id DESC LIMIT 1) h ON true
 ORDER BY r.id DESC LIMIT $1
"""

BILLED = """
SELECT key AS currency, n AS charges, amount AS amount_cents
  FROM run_summary_totals WHERE run_id = $1 AND kind = 'billed' ORDER BY key
"""

# Refunds of the run's charges (made later, through refund jobs of their own), per currency:
# summary rows (migration 0017), not a join over every refund ever made.
REFUNDED = """
SELECT key AS currency, n AS refunds, amount AS amount_cents
  FROM run_summary_totals WHERE run_id = $1 AND kind = 'refunded' ORDER BY key
"""

DECLINES = """
SELECT key AS reason, n AS jobs
  FROM run_summary_totals WHERE run_id = $1 AND kind = 'decline' ORDER BY n DESC, key
"""

# A page of $2 (NULL: all) after job $3 (0: from the first; a keyset cursor), through
# billing_jobs_run_state_id_idx, already in id order.
DEAD = """
SELECT id AS job_id, account_id, last_error AS reason
  FROM billing_jobs WHERE run_id = $1 AND state = 'dead' AND id > $3 ORDER BY id LIMIT $2
"""

BLOCKED = """
SELECT account_id, period_start, job_id, reason
  FROM run_blocked WHERE run_id = $1 ORDER BY account_id
"""

# Invoices in number order: by billq_number_order (migration 0019: the year, then the
# sequence as an integer), since as text '2026-1000000' sorts before '2026-100001'. $5 is a
# keyset cursor, the last number of the page before (NULL: from the first; every key is
# >= 0). The number itself breaks ties, so a page never repeats or skips a row.

# One account's invoices: period invoices through invoices_period_key, the other kinds
# through the account's non-period jobs (billing_jobs_account_other_idx, invoices_job_key),
# so an account page reads its own few rows. The catch-all INVOICES below, given an account,
# scanned every invoice in number order (they are as many as the charges).
ACCOUNT_INVOICES = """
SELECT number, account_id, period_start, period_end, amount_cents, currency, status,
       gateway_charge_id, created_at, paid_at
  FROM (SELECT i.* FROM invoices i WHERE i.account_id = $1 AND i.kind = 'period'
        UNION ALL
        SELECT i.* FROM billing_jobs j
          JOIN invoices i ON i.job_id = j.id AND i.kind <> 'period'
         WHERE j.account_id = $1 AND j.kind <> 'period') i
 WHERE ($2::date IS NULL OR period_start >= $2)
   AND ($3::date IS NULL OR period_start < $3)
   AND (billq_number_order(number), number)
       > (coalesce(billq_number_order($5::text), -1), coalesce($5::text, ''))
 ORDER BY billq_number_order(number), number
 LIMIT $4
"""

# Through invoices_number_order_idx, from the cursor on.
INVOICES = """
SELECT number, account_id, period_start, period_end, amount_cents, currency, status,
       gateway_charge_id, created_at, paid_at
  FROM invoices
 WHERE ($1::bigint IS NULL OR account_id = $1)
   AND ($2::date IS NULL OR period_start >= $2)
   AND ($3::date IS NULL OR period_start < $3)
   AND (billq_number_order(number), number)
       > (coalesce(billq_number_order($5::text), -1), coalesce($5::text, ''))
 ORDER BY billq_number_order(number), number
 LIMIT $4
"""

INVOICE = """
SELECT i.number, i.account_id, i.period_start, i.period_end, i.amount_cents, i.currency,
       i.status, i.gateway_charge_id, i.job_id, i.created_at, i.paid_at, i.credited_cents,
       coalesce((SELECT json_agg(json_build_object(
                    'number', n.number, 'amount_cents', n.amount_cents,
                    'refund_id', r.gateway_refund_id, 'created_at', n.created_at)
                  ORDER BY billq_number_order(n.number), n.number)
                  FROM credit_notes n JOIN refunds r ON r.id = n.refund_id
                 WHERE n.invoice_id = i.id), '[]') AS credit_notes
  FROM invoices i WHERE i.number = $1
"""


async def runs(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    return list(await pool.fetch(RUNS, limit))


async def report(
    pool: asyncpg.Pool, run_id: int, dead_limit: int | None = None, dead_after: int = 0
) -> dict[str, list[asyncpg.Record]]:
    return {
        "billed": list(await pool.fetch(BILLED, run_id)),
        "refunded": list(await pool.fetch(REFUNDED, run_id)),
        "declines": list(await pool.fetch(DECLINES, run_id)),
        "dead": list(await pool.fetch(DEAD, run_id, dead_limit, dead_after)),
        "blocked": list(await pool.fetch(BLOCKED, run_id)),
    }


async def invoices(
    pool: asyncpg.Pool,
    account_id: int | None,
    period: tuple[object, object] | None,
    limit: int,
    after: str | None = None,
) -> list[asyncpg.Record]:
    """Invoices in number order (year, then sequence); ``after`` (a number, the last of the
    page before) gives the next page."""
    start, end = period if period else (None, None)
    if account_id is not None:
        return list(await pool.fetch(ACCOUNT_INVOICES, account_id, start, end, limit, after))
    return list(await pool.fetch(INVOICES, None, start, end, limit, after))


async def invoice(pool: asyncpg.Pool, number: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(INVOICE, number)
    return row
