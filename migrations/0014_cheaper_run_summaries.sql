-- Cheaper run-summary triggers (migrations 0009, 0010, 0013): the same figures and the same
-- plans that do not depend on statistics (one index probe per changed row, LATERAL ... LIMIT
-- 1), for less work per statement. Each job's life fires the jobs trigger four times
-- (distributed, published, claimed, recorded) and each charge the accounts trigger once, so
-- these functions run on every statement of the hot path.
--
-- - Static SQL, one statement per operation, instead of a query text built and planned on
--   every call (format + EXECUTE): PL/pgSQL prepares a static statement once per session.
-- - The transition rows are read once, with only the summarised columns, instead of being
--   copied whole into a CTE that five branches scan.
-- - The accounts trigger returns at once when no row's status changed (every charge
--   recorded advances its account: that update changes no status), and otherwise joins the
--   old and new rows once instead of twice.

-- What one billing_jobs row counts for, signed by the caller: its state; if failed, its
-- decline reason and, for a first decline, its account's status; if finished, its second;
-- if a dunning retry, its attempt under the run of the period's first decline. An inlined
-- SQL function (no call per row): the lookups are scalar subqueries fenced by LIMIT 1, one
-- index probe each, for the rows that need them only.
CREATE FUNCTION run_summaries_job_rows(
    job_run bigint, job_state text, job_decline text, job_error text, job_finished timestamptz,
    job_dunning int, job_account bigint, job_period date
) RETURNS TABLE (run_id bigint, kind text, key text, attempt int, second bigint)
LANGUAGE sql STABLE AS $$
    SELECT job_run, 'state', job_state, 0, 0::bigint
    UNION ALL
    SELECT job_run, 'decline', coalesce(job_decline, job_error, 'unknown'), 0, 0
     WHERE job_state = 'failed'
    UNION ALL
    SELECT job_run, 'finished', '', 0, floor(extract(epoch FROM job_finished))::bigint
     WHERE job_state IN ('succeeded', 'failed', 'dead', 'already_paid')
       AND job_finished IS NOT NULL
    UNION ALL
    -- The period key (account, period, attempt) holds at most one first attempt.
    SELECT o.run_id, 'retry', job_state, job_dunning, 0
      FROM (SELECT f.run_id FROM billing_jobs f
             WHERE f.account_id = job_account AND f.period_start = job_period
               AND f.kind = 'period' AND f.dunning_attempt = 0 AND f.state = 'failed'
             LIMIT 1) o
     WHERE job_dunning > 0
    UNION ALL
    SELECT job_run, 'dunning', a.status, 0, 0
      FROM (SELECT x.status FROM accounts x WHERE x.id = job_account LIMIT 1) a
     WHERE job_state = 'failed' AND job_dunning = 0
$$;

CREATE OR REPLACE FUNCTION run_summaries_on_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO run_summary_deltas (run_id, kind, key, attempt, second, n)
        SELECT d.run_id, d.kind, d.key, d.attempt, d.second, sum(c.sign)
          FROM (SELECT 1 AS sign, run_id, state, decline_code, last_error, finished_at,
                       dunning_attempt, account_id, period_start FROM new_rows
                UNION ALL
                SELECT -1, run_id, state, decline_code, last_error, finished_at,
                       dunning_attempt, account_id, period_start FROM old_rows) c
         CROSS JOIN LATERAL run_summaries_job_rows(
               c.run_id, c.state, c.decline_code, c.last_error, c.finished_at,
               c.dunning_attempt, c.account_id, c.period_start) d
         WHERE c.run_id IS NOT NULL
         GROUP BY d.run_id, d.kind, d.key, d.attempt, d.second
        HAVING sum(c.sign) <> 0;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO run_summary_deltas (run_id, kind, key, attempt, second, n)
        SELECT d.run_id, d.kind, d.key, d.attempt, d.second, count(*)
          FROM new_rows c
         CROSS JOIN LATERAL run_summaries_job_rows(
               c.run_id, c.state, c.decline_code, c.last_error, c.finished_at,
               c.dunning_attempt, c.account_id, c.period_start) d
         WHERE c.run_id IS NOT NULL
         GROUP BY d.run_id, d.kind, d.key, d.attempt, d.second;
    ELSE
        INSERT INTO run_summary_deltas (run_id, kind, key, attempt, second, n)
        SELECT d.run_id, d.kind, d.key, d.attempt, d.second, -count(*)
          FROM old_rows c
         CROSS JOIN LATERAL run_summaries_job_rows(
               c.run_id, c.state, c.decline_code, c.last_error, c.finished_at,
               c.dunning_attempt, c.account_id, c.period_start) d
         WHERE c.run_id IS NOT NULL
         GROUP BY d.run_id, d.kind, d.key, d.attempt, d.second;
    END IF;
    RETURN NULL;
END $$;

-- Same lookups as 0013 (both halves of billing_jobs by account, each on its index).
CREATE OR REPLACE FUNCTION run_summaries_on_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
                    WHERE n.status IS DISTINCT FROM o.status) THEN
        RETURN NULL;
    END IF;
    INSERT INTO run_summary_deltas (run_id, kind, key, n)
    SELECT j.run_id, 'dunning', s.status, sum(s.sign)
      FROM (SELECT n.id, n.status AS after, o.status AS before
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.status IS DISTINCT FROM o.status) m
     CROSS JOIN LATERAL (VALUES (m.after, 1), (m.before, -1)) s(status, sign)
     CROSS JOIN LATERAL (
           SELECT p.run_id FROM billing_jobs p
            WHERE p.account_id = m.id AND p.kind = 'period'
              AND p.run_id IS NOT NULL AND p.dunning_attempt = 0 AND p.state = 'failed'
              AND p.finished_at IS DISTINCT FROM now()
           UNION ALL
           SELECT q.run_id FROM billing_jobs q
            WHERE q.account_id = m.id AND q.kind <> 'period'
              AND q.run_id IS NOT NULL AND q.dunning_attempt = 0 AND q.state = 'failed'
              AND q.finished_at IS DISTINCT FROM now()
           OFFSET 0) j
     GROUP BY j.run_id, s.status
    HAVING sum(s.sign) <> 0;
    RETURN NULL;
END $$;

-- Charges are only inserted on the hot path: that statement is static; an update or a
-- delete of charges (repairs, tests) keeps 0013's statement.
CREATE OR REPLACE FUNCTION run_summaries_on_charges() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO run_summary_deltas (run_id, kind, key, n, amount)
        SELECT j.run_id, 'billed', c.currency::text, count(*), sum(c.amount_cents)
          FROM new_rows c CROSS JOIN LATERAL (
               SELECT b.run_id FROM billing_jobs b WHERE b.id = c.job_id LIMIT 1) j
         WHERE j.run_id IS NOT NULL
         GROUP BY j.run_id, c.currency;
        RETURN NULL;
    END IF;
    EXECUTE format($q$
    INSERT INTO run_summary_deltas (run_id, kind, key, n, amount)
    SELECT j.run_id, 'billed', c.currency::text, sum(c.sign), sum(c.sign * c.amount_cents)
      FROM (%s) c CROSS JOIN LATERAL (
           SELECT b.run_id FROM billing_jobs b WHERE b.id = c.job_id LIMIT 1) j
     WHERE j.run_id IS NOT NULL
     GROUP BY j.run_id, c.currency
    HAVING sum(c.sign) <> 0 OR sum(c.sign * c.amount_cents) <> 0
    $q$, run_summaries_changed(TG_OP));
    RETURN NULL;
END $$;
