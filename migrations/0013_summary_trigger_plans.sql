-- Run-summary triggers (migrations 0009, 0010) whose cost does not depend on the planner's
-- statistics. Same figures; only how each lookup is written changes.
--
-- A soak of 1,000,000 accounts stalled at ~30 accounts/s: one worker's group commit spent
-- 43 s in the jobs trigger and every other commit waited behind it. Mid-run (autovacuum not
-- yet caught up with a run that grew from nothing) billing_jobs has no statistics, and the
-- planner drove the "retry" lookup from billing_jobs — every first decline of every run — and
-- probed the transition rows once per decline, instead of the reverse. The accounts trigger
-- could not use an index at all: its lookup had no `kind`, and every index on
-- billing_jobs(account_id, …) is partial on kind.
--
-- Now every lookup is a LATERAL subquery on a unique or partial index, fenced with LIMIT or
-- OFFSET 0 so the planner cannot flatten it into a join it may reorder: the work is one index
-- probe per changed row, however many jobs the table holds.

CREATE OR REPLACE FUNCTION run_summaries_on_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text := run_summaries_changed(TG_OP);
BEGIN
    EXECUTE format($q$
    WITH c AS MATERIALIZED (SELECT * FROM (%s) r WHERE r.run_id IS NOT NULL)
    INSERT INTO run_summary_deltas (run_id, kind, key, attempt, second, n)
    SELECT run_id, kind, key, attempt, second, sum(sign)
      FROM (SELECT run_id, 'state' AS kind, state::text AS key, 0 AS attempt, 0::bigint AS second,
                   sign
              FROM c
            UNION ALL
            SELECT run_id, 'decline', coalesce(decline_code, last_error, 'unknown'), 0, 0, sign
              FROM c WHERE state = 'failed'
            UNION ALL
            SELECT run_id, 'finished', '', 0, floor(extract(epoch FROM finished_at))::bigint, sign
              FROM c
             WHERE state IN ('succeeded', 'failed', 'dead', 'already_paid')
               AND finished_at IS NOT NULL
            UNION ALL
            -- The period key (account, period, attempt) holds at most one first attempt.
            SELECT o.run_id, 'retry', c.state, c.dunning_attempt, 0, c.sign
              FROM c CROSS JOIN LATERAL (
                   SELECT f.run_id FROM billing_jobs f
                    WHERE f.account_id = c.account_id AND f.period_start = c.period_start
                      AND f.kind = 'period' AND f.dunning_attempt = 0 AND f.state = 'failed'
                    LIMIT 1) o
             WHERE c.dunning_attempt > 0
            UNION ALL
            SELECT c.run_id, 'dunning', a.status, 0, 0, c.sign
              FROM c CROSS JOIN LATERAL (
                   SELECT x.status FROM accounts x WHERE x.id = c.account_id LIMIT 1) a
             WHERE c.state = 'failed' AND c.dunning_attempt = 0) d
     GROUP BY run_id, kind, key, attempt, second
    HAVING sum(sign) <> 0
    $q$, changed);
    RETURN NULL;
END $$;

-- Both halves of billing_jobs by account (period jobs, then the others), each on its index.
CREATE OR REPLACE FUNCTION run_summaries_on_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_summary_deltas (run_id, kind, key, n)
    SELECT j.run_id, 'dunning', s.status, sum(s.sign)
      FROM (SELECT n.id, n.status, 1 AS sign
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.status IS DISTINCT FROM o.status
            UNION ALL
            SELECT o.id, o.status, -1
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.status IS DISTINCT FROM o.status) s
      CROSS JOIN LATERAL (
           SELECT p.run_id FROM billing_jobs p
            WHERE p.account_id = s.id AND p.kind = 'period'
              AND p.run_id IS NOT NULL AND p.dunning_attempt = 0 AND p.state = 'failed'
              AND p.finished_at IS DISTINCT FROM now()
           UNION ALL
           SELECT q.run_id FROM billing_jobs q
            WHERE q.account_id = s.id AND q.kind <> 'period'
              AND q.run_id IS NOT NULL AND q.dunning_attempt = 0 AND q.state = 'failed'
              AND q.finished_at IS DISTINCT FROM now()
           OFFSET 0) j
     GROUP BY j.run_id, s.status
    HAVING sum(s.sign) <> 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION run_summaries_on_charges() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text := run_summaries_changed(TG_OP);
BEGIN
    EXECUTE format($q$
    INSERT INTO run_summary_deltas (run_id, kind, key, n, amount)
    SELECT j.run_id, 'billed', c.currency::text, sum(c.sign), sum(c.sign * c.amount_cents)
      FROM (%s) c CROSS JOIN LATERAL (
           SELECT b.run_id FROM billing_jobs b WHERE b.id = c.job_id LIMIT 1) j
     WHERE j.run_id IS NOT NULL
     GROUP BY j.run_id, c.currency
    HAVING sum(c.sign) <> 0 OR sum(c.sign * c.amount_cents) <> 0
    $q$, changed);
    RETURN NULL;
END $$;
