"""billing_jobs, charges and the account updates that go with them: ``JobsRepo`` on Postgres.

Each phase of the worker is one statement (so one implicit transaction):
claim → (gateway call) → record. Every record is fenced by ``attempts``: a holder
whose job was taken over changes nothing.

Longer than most modules: the claim's gate and the group commit are long statements, and
they say for each job kind (period, one-off) what it may touch, here in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from shared.billing.claims import ClaimedJob, ClaimRequest, JobSnapshot
from shared.billing.dunning import DeclineDecision
from shared.db import refunds_repo
from shared.db.errors import classified

# Seconds without a heartbeat after which a worker's locks may be taken over.
STALE_WORKER_S = 30.0

# The claim: the account locks, then the fenced claim and its gate, in one call of the
# function migrations/0021_claim_function.sql defines (there, why the locks come first and
# why the function is VOLATILE). One round trip per claimed batch.
CLAIM = "SELECT * FROM billq_claim($1, $2, $3, $4, $5, $6, $7, $8, $9)"

LOOKUP = """
SELECT id, account_id, idempotency_key, state, attempts
  FROM billing_jobs WHERE id = ANY($1::bigint[])
"""

# Group commit: a batch of charges in one transaction, fenced row by row. Invoice numbers
# for the batch come from one increment of the year's counter (gap-free: the counter row
# commits or rolls back with the invoices). A one-off charge gets its charge row and its own
# paid invoice, and leaves the account alone: its billing period, status and dunning belong
# to period jobs only.
RECORD_SUCCESSES = """
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[]) AS t(job_id, attempts, charge_id)
), done AS (
    -- ``j.id = ANY (…)`` beside ``state = 'processing'``: an index condition on both columns
    -- of billing_jobs_open_idx, a probe per job. With the state alone as its condition the
    -- planner (no statistics mid-run) read every 'processing' entry of that index, and
    -- without vacuum those are every job the run has processed: ≈ 30,000 entries and
    -- ≈ 2,000 buffers per group commit at 30,000 accounts, in this CTE and in ``twice``.
    UPDATE billing_jobs j
       SET state = 'succeeded', finished_at = now(), updated_at = now(),
           locked_by = NULL, locked_until = NULL, last_error = NULL
      FROM input i
     WHERE j.id = i.job_id AND j.attempts = i.attempts AND j.state = 'processing'
       AND j.id = ANY (ARRAY(SELECT job_id FROM input))
       AND NOT EXISTS (SELECT 1 FROM charges c
                        WHERE j.kind = 'period' AND c.kind = 'period'
                          AND c.account_id = j.account_id
                          AND daterange(c.period_start, c.period_end)
                              && daterange(j.period_start, j.period_end)
                          AND c.idempotency_key <> j.idempotency_key)
    RETURNING j.id, j.kind, j.account_id, j.period_start, j.period_end, j.amount_cents,
              j.currency, j.idempotency_key, j.description, i.charge_id
), twice AS (
    -- The gateway took money for days another charge already paid (only a charge made
    -- before the gate existed, or outside billq, can do this): never overwrite the first
    -- charge's records; leave the job saying exactly what to refund (`billq audit` lists it).
    UPDATE billing_jobs j
       SET state = 'already_paid', finished_at = now(), updated_at = now(),
           locked_by = NULL, locked_until = NULL,
           last_error = 'double charge at the gateway: ' || i.charge_id
                        || ' took money for a period already paid; refund it'
      FROM input i
     WHERE j.id = i.job_id AND j.attempts = i.attempts AND j.state = 'processing'
       AND j.id = ANY (ARRAY(SELECT job_id FROM input))
       -- A subplan per input row, not a semi-join: pulled up, the EXISTS's `j.kind =
       -- 'period'` would restrict j and, without statistics mid-run, have j read through
       -- the partial index billing_jobs_period_key: every period job, each group commit.
       AND (SELECT true FROM charges c
             WHERE j.kind = 'period' AND c.kind = 'period'
               AND c.account_id = j.account_id
               AND daterange(c.period_start, c.period_end)
                   && daterange(j.period_start, j.period_end)
               AND c.idempotency_key <> j.idempotency_key
             LIMIT 1)
    RETURNING j.id
), charge AS (
    INSERT INTO charges (job_id, kind, account_id, period_start, period_end, amount_cents,
                         currency, idempotency_key, gateway_charge_id)
    SELECT id, kind, account_id, period_start, period_end, amount_cents, currency,
           idempotency_key, charge_id
      FROM done
    ON CONFLICT DO NOTHING
    RETURNING job_id
), account AS (
    -- Advance at most once: only while next_billing_at is still before the period's end.
    UPDATE accounts a
       SET next_billing_at = (d.period_end::timestamp AT TIME ZONE 'UTC'),
           status = CASE WHEN a.status IN ('past_due', 'suspended') THEN 'active'
                         ELSE a.status END,
           dunning_attempt = 0, dunning_next_at = NULL, first_declined_at = NULL,
           updated_at = now()
      FROM done d
     WHERE a.id = d.account_id AND d.kind = 'period'
       AND a.next_billing_at < (d.period_end::timestamp AT TIME ZONE 'UTC')
    RETURNING a.id
), paid AS (
    UPDATE invoices i SET status = 'paid', gateway_charge_id = d.charge_id, paid_at = now(),
           job_id = d.id
      FROM done d
     WHERE d.kind = 'period' AND i.kind = 'period'
       AND i.account_id = d.account_id AND i.period_start = d.period_start
    RETURNING i.account_id, i.period_start
), need AS (
    -- CTE rows carry no statistics: a join of two is planned as a nested loop, 65,280
    -- comparisons of rows for a 256-row batch. Membership in an array costs a fraction.
    SELECT d.*, row_number() OVER (ORDER BY d.id) AS rn
      FROM done d
     WHERE d.id = ANY (ARRAY(SELECT job_id FROM charge))
       AND NOT EXISTS (SELECT 1 FROM paid p
                        WHERE d.kind = 'period'
                          AND p.account_id = d.account_id AND p.period_start = d.period_start)
), yr AS (
    SELECT extract(year FROM now() AT TIME ZONE 'UTC')::int AS y
), counter AS (
    INSERT INTO invoice_counters (year, last)
    SELECT y, (SELECT count(*) FROM need) FROM yr WHERE EXISTS (SELECT 1 FROM need)
    ON CONFLICT (year) DO UPDATE SET last = invoice_counters.last + EXCLUDED.last
    RETURNING year, last
), invoice AS (
    INSERT INTO invoices (number, kind, description, account_id, period_start, period_end,
                          amount_cents, currency, status, gateway_charge_id, job_id, paid_at)
    SELECT k.year::text || '-' || lpad(x.seq::text, greatest(6, length(x.seq::text)), '0'),
           n.kind, n.description, n.account_id, n.period_start, n.period_end, n.amount_cents,
           n.currency, 'paid', n.charge_id, n.id, now()
      FROM need n CROSS JOIN counter k
           -- lpad() truncates: past 999,999 the number grows instead.
           CROSS JOIN LATERAL (SELECT k.last - (SELECT count(*) FROM need) + n.rn AS seq) x
    RETURNING id
), event AS (
    INSERT INTO account_events (account_id, kind, from_status, to_status, reason, job_id)
    -- ``accounts`` as it was before this statement (every part of it sees that snapshot):
    -- the past-due accounts a period charge of this batch advanced, one event per job.
    SELECT a.id, 'reactivated', a.status, 'active', 'charge succeeded', d.id
      FROM done d JOIN accounts a ON a.id = d.account_id
     WHERE a.status IN ('past_due', 'suspended')
       -- on d's side: a filter of the CTE's rows, and one index probe of accounts per row
       AND d.account_id = ANY (ARRAY(SELECT p.account_id FROM done p WHERE p.kind = 'period'))
       AND d.account_id = ANY (ARRAY(SELECT x.id FROM account x))
    RETURNING id
)
SELECT id, true AS charged FROM done
UNION ALL
SELECT id, false FROM twice
"""

# $4 next dunning attempt (NULL: stop), $5 its time, $6 account status, $7 invoice status.
# A declined one-off ends failed with an account event, and touches neither the account's
# status and dunning nor any invoice: the caller learns of it and decides.
RECORD_DECLINE = """
WITH failed AS (
    UPDATE billing_jobs
       SET state = 'failed', finished_at = now(), updated_at = now(),
           locked_by = NULL, locked_until = NULL, last_error = $3, decline_code = $8
     WHERE id = $1 AND attempts = $2 AND state = 'processing'
    RETURNING id, kind, account_id, period_start, period_end, amount_cents, currency
), before AS (
    SELECT a.id, a.status FROM accounts a JOIN failed f ON a.id = f.account_id AND f.kind = 'period'
), account AS (
    UPDATE accounts a
       SET status = CASE WHEN a.status = 'cancelled' THEN a.status ELSE $6 END,
           dunning_attempt = coalesce($4, a.dunning_attempt),
           dunning_next_at = $5,
           first_declined_at = coalesce(a.first_declined_at, now()),
           updated_at = now()
      FROM failed f WHERE a.id = f.account_id AND f.kind = 'period'
    RETURNING a.id
), reopened AS (
    UPDATE invoices i SET status = $7
      FROM failed f
     WHERE f.kind = 'period' AND i.kind = 'period'
       AND i.account_id = f.account_id AND i.period_start = f.period_start
       AND i.status <> 'paid'
    RETURNING i.id
), invoice AS (
    INSERT INTO invoices (number, account_id, period_start, period_end, amount_cents, currency,
                          status, job_id)
    SELECT billq_next_invoice_number(extract(year FROM now() AT TIME ZONE 'UTC')::int),
           f.account_id, f.period_start, f.period_end, f.amount_cents, f.currency, $7, f.id
      FROM failed f
     WHERE f.kind = 'period' AND NOT EXISTS (SELECT 1 FROM reopened)
       AND NOT EXISTS (SELECT 1 FROM invoices i
                        WHERE i.kind = 'period'
                          AND i.account_id = f.account_id AND i.period_start = f.period_start)
    RETURNING id
), event AS (
    INSERT INTO account_events (account_id, kind, from_status, to_status, reason, job_id)
    SELECT b.id, CASE WHEN $6 = 'suspended' THEN 'suspended' ELSE 'declined' END,
           b.status, $6, $3, f.id
      FROM before b JOIN failed f ON f.account_id = b.id
    UNION ALL
    SELECT f.account_id, 'oneoff_declined', NULL, NULL, $3, f.id
      FROM failed f WHERE f.kind <> 'period'
    RETURNING id
)
SELECT count(*) FROM failed
"""

RECORD_RETRY = """
UPDATE billing_jobs
   SET state = 'retrying', updated_at = now(),
           locked_by = NULL, locked_until = NULL, last_error = $3
 WHERE id = $1 AND attempts = $2 AND state = 'processing'
"""

# The gate found the period paid by another job: this one ends without charging.
RECORD_ALREADY_PAID = """
UPDATE billing_jobs
   SET state = 'already_paid', finished_at = now(), updated_at = now(),
       locked_by = NULL, locked_until = NULL, last_error = $3
 WHERE id = $1 AND attempts = $2 AND state = 'processing'
"""

# attempts NULL: dead before any claim (e.g. the account vanished) — no fence to check.
RECORD_DEAD = """
UPDATE billing_jobs
   SET state = 'dead', finished_at = now(), updated_at = now(),
           locked_by = NULL, locked_until = NULL,
       last_error = $3
 WHERE id = $1 AND ($2::int IS NULL OR attempts = $2)
   AND state NOT IN ('succeeded', 'failed', 'dead', 'already_paid')
"""


@classified
async def record_successes(
    pool: asyncpg.Pool, items: Sequence[tuple[int, int, str]]
) -> dict[int, bool]:
    """(job_id, attempts fence, gateway charge id) rows → {job id: recorded as the period's
    charge (True) or as a double charge to refund (False)} for the rows that landed; the
    rest were fenced out by a newer holder."""
    if not items:
        return {}
    rows = await pool.fetch(
        RECORD_SUCCESSES, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items]
    )
    return {r["id"]: r["charged"] for r in rows}


class PgJobsRepo:
    """``JobsRepo`` on Postgres: SQL for one job's life in the worker. Every method raises the
    billq error tree (``DatabaseUnavailable`` for a retryable database failure), never a
    driver class."""

    def __init__(self, pool: asyncpg.Pool, *, worker_id: str, lease_s: float) -> None:
        self._pool = pool
        self._worker_id = worker_id
        self._lease_s = lease_s

    @classified
    async def claim_many(self, requests: Sequence[ClaimRequest]) -> dict[int, ClaimedJob]:
        """Claim every claimable job in one statement; keyed by the request's position."""
        if not requests:
            return {}
        rows = await self._pool.fetch(
            CLAIM,
            [r.job_id for r in requests],
            [r.account_id for r in requests],
            [r.idempotency_key for r in requests],
            [r.redelivered for r in requests],
            [r.handoff for r in requests],
            list(range(len(requests))),
            self._worker_id,
            self._lease_s,
            STALE_WORKER_S,
        )
        return {
            row["ord"]: ClaimedJob(
                job_id=row["id"],
                account_id=row["account_id"],
                period_start=row["period_start"],
                period_end=row["period_end"],
                idempotency_key=row["idempotency_key"],
                amount_cents=row["amount_cents"],
                currency=row["currency"],
                attempts=row["attempts"],
                account_status=row["account_status"],
                payment_method=row["payment_method"],
                gateway_customer=row["gateway_customer"],
                dunning_attempt=row["dunning_attempt"],
                first_declined_at=row["first_declined_at"],
                attempt_base=row["attempt_base"],
                started_at=row["started_at"],
                cancelled_before=bool(row["cancelled_before"]),
                kind=row["kind"],
                paid_by=row["paid_by"],
                overlaps_paid=row["overlaps_paid"],
                busy_with=row["busy_with"],
                refund_of=row["refund_of"],
                refund_charge=row["refund_charge"],
                refunded_by=row["refunded_by"],
            )
            for row in rows
        }

    @classified
    async def lookup_many(self, job_ids: Sequence[int]) -> dict[int, JobSnapshot]:
        rows = await self._pool.fetch(LOOKUP, list(job_ids))
        return {
            r["id"]: JobSnapshot(
                r["id"], r["account_id"], r["idempotency_key"], r["state"], r["attempts"]
            )
            for r in rows
        }

    @classified
    async def record_successes(self, charged: Sequence[tuple[ClaimedJob, str]]) -> dict[int, bool]:
        """Commit a batch of charges (see the module function ``record_successes``)."""
        return await record_successes(self._pool, [(j.job_id, j.attempts, c) for j, c in charged])

    @classified
    async def record_decline(
        self, job: ClaimedJob, reason: str, decline_code: str | None, decision: DeclineDecision
    ) -> bool:
        return bool(
            await self._pool.fetchval(
                RECORD_DECLINE,
                job.job_id,
                job.attempts,
                reason,
                decision.next_attempt,
                decision.next_at,
                decision.account_status,
                decision.invoice_status,
                decline_code,
            )
        )

    @classified
    async def record_retry(self, job: ClaimedJob, reason: str) -> bool:
        status = await self._pool.execute(RECORD_RETRY, job.job_id, job.attempts, reason)
        return status.endswith(" 1")

    @classified
    async def record_already_paid(self, job: ClaimedJob, reason: str) -> bool:
        status = await self._pool.execute(
            RECORD_ALREADY_PAID, job.job_id, job.attempts, reason[:1000]
        )
        return status.endswith(" 1")

    async def record_refund(self, job: ClaimedJob, refund_id: str) -> bool:
        """Commit a refund (see ``shared.db.refunds_repo.record_refund``)."""
        return await refunds_repo.record_refund(self._pool, job.job_id, job.attempts, refund_id)

    @classified
    async def record_dead(self, job_id: int, attempts: int | None, reason: str) -> bool:
        status = await self._pool.execute(RECORD_DEAD, job_id, attempts, reason[:1000])
        return status.endswith(" 1")
