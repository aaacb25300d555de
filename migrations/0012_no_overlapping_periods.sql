-- No overlapping periods, by construction (and two smaller money-safety fixes beside it).
--
-- 1. The database refuses two period charges of one account whose days overlap. UNIQUE
--    (account_id, period_start) only stops the same period twice; after a change of
--    billing_anchor_day or billing_interval a second period with another start could cover
--    days already paid. charges gets its period's end (copied from its job) and an exclusion
--    constraint over [period_start, period_end).
--
--    The constraint uses btree_gist's `account_id WITH =` (btree_gist ships with Postgres'
--    contrib package, is a trusted extension since Postgres 13 — a database owner may create
--    it — and is on the allow-lists of the common managed services). The built-in-only form,
--    the account as a one-point int8range, was measured first and rejected: with workers
--    committing charges concurrently its checks waited on each other's transactions, and the
--    default pipeline (bench `pipeline-default`, 20,000 accounts, a quiet 2-core machine)
--    fell from 1,301 to 307 accounts/s; this form gave 1,100/s in the same hour.
--
--    Existing rows: period_end is copied from each charge's job. If rows already overlap,
--    the migration stops with a message naming them and changes nothing (it runs in one
--    transaction): those are double charges for the same days — refund one, then delete its
--    charges row (or move its dates) and migrate again.
ALTER TABLE charges ADD COLUMN period_end date;
UPDATE charges c SET period_end = j.period_end FROM billing_jobs j WHERE j.id = c.job_id;
ALTER TABLE charges ALTER COLUMN period_end SET NOT NULL;
ALTER TABLE charges ADD CONSTRAINT charges_period_not_empty CHECK (period_end > period_start);

DO $$
DECLARE
    found text;
BEGIN
    SELECT string_agg(format('account %s: %s [%s, %s) and %s [%s, %s)', a.account_id,
                             a.gateway_charge_id, a.period_start, a.period_end,
                             b.gateway_charge_id, b.period_start, b.period_end), '; ')
      INTO found
      FROM (SELECT a.*, b.id AS other
              FROM charges a JOIN charges b
                ON b.account_id = a.account_id AND b.id > a.id
               AND a.kind = 'period' AND b.kind = 'period'
               AND daterange(a.period_start, a.period_end) && daterange(b.period_start, b.period_end)
             ORDER BY a.account_id, a.id LIMIT 20) a
      JOIN charges b ON b.id = a.other;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'charges overlap (double charges for the same days; refund one of each '
                        'pair and remove its charges row, then migrate again): %', found;
    END IF;
END $$;

-- Period charges only: a one-off charge (kind 'oneoff', migration 0010) covers no period.
CREATE EXTENSION IF NOT EXISTS btree_gist;
ALTER TABLE charges ADD CONSTRAINT charges_no_overlapping_periods
    EXCLUDE USING gist (account_id WITH =,
                        daterange(period_start, period_end) WITH &&)
    WHERE (kind = 'period');

-- 2. Who cancelled an account: 'accounts import' for an import row, else the operator
--    (`cli:USER`, `dashboard:LOGIN`). An operator's cancel is sticky: an import's
--    `status=active` leaves it cancelled; only `billq accounts reactivate` undoes it.
--    Existing cancellations by `billq accounts cancel` are found by their event.
ALTER TABLE accounts ADD COLUMN cancelled_by text;
UPDATE accounts a
   SET cancelled_by = CASE WHEN e.reason LIKE 'cancelled by operator%' THEN 'operator'
                           ELSE 'accounts import' END
  FROM (SELECT DISTINCT ON (account_id) account_id, reason
          FROM account_events WHERE kind = 'cancelled'
         ORDER BY account_id, at DESC, id DESC) e
 WHERE e.account_id = a.id AND a.cancelled_at IS NOT NULL;

-- 3. Run hooks: an event of a run that settled before any billq process had
--    BILLQ_RUN_WEBHOOK_URL set is 'skipped', never sent — setting the URL later does not
--    flood the receiver with the backlog. The first process with a URL stores the time here.
ALTER TABLE run_hook_events DROP CONSTRAINT run_hook_events_state_check;
ALTER TABLE run_hook_events ADD CONSTRAINT run_hook_events_state_check
    CHECK (state IN ('pending', 'delivered', 'failed', 'skipped'));
CREATE TABLE run_hook_settings (
    only_one          boolean     PRIMARY KEY DEFAULT true CHECK (only_one),
    configured_since  timestamptz NOT NULL
);
