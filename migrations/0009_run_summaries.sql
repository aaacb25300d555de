-- Per-run summary rows: what `billq status|runs|report`, the dashboard's `/`, `/runs/{id}`
-- and `/api/...` count (jobs by state, billed per currency, declines by reason, the dunning
-- pipeline, finished jobs per second) without scanning billing_jobs or charges, which grow
-- to millions of rows per run.
--
-- Writers never touch a shared counter row: a statement-level trigger (transition tables,
-- so one group commit of hundreds of jobs is one trigger call) appends its net deltas to
-- run_summary_deltas, an insert-only table without unique keys, so concurrent workers never
-- wait for each other's row locks and can never deadlock on it. billq_fold_run_summaries()
-- (worker heartbeats, `billq status|runs|report`, the dashboard) moves the deltas into
-- run_summaries in one transaction. Readers sum both through run_summary_totals, in one
-- statement (one snapshot), so a figure is exact whether or not a fold ran.

-- kind / key / attempt / second:
--   state     job state                  jobs of the run in that state
--   decline   decline reason             failed jobs (coalesce(decline_code, last_error))
--   billed    currency                   n = charges, amount = their sum in minor units
--   finished  '' / unix second           finished jobs (terminal states) per second
--   retry     job state / attempt        dunning retries of the run's first declines
--   dunning   account status             the run's first declines by their account's status
-- No foreign key to billing_runs: summaries are derived data and must never block removing
-- or truncating what they summarise.
CREATE TABLE run_summaries (
    run_id   bigint   NOT NULL,
    kind     text     NOT NULL,
    key      text     NOT NULL DEFAULT '',
    attempt  smallint NOT NULL DEFAULT 0,
    second   bigint   NOT NULL DEFAULT 0,
    n        bigint   NOT NULL DEFAULT 0,
    amount   bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, kind, key, attempt, second)
);

-- The same columns, without the key or any index: an append costs the writer one heap
-- insert, and no writer ever waits for another. Folds keep it short.
CREATE TABLE run_summary_deltas (LIKE run_summaries INCLUDING DEFAULTS);

-- Exact figures: folded rows plus the deltas not folded yet. Filters on run_id and kind are
-- pushed into both branches (the primary key, and the short delta table).
CREATE VIEW run_summary_totals AS
SELECT run_id, kind, key, attempt, second, sum(n)::bigint AS n, sum(amount)::bigint AS amount
  FROM (SELECT run_id, kind, key, attempt, second, n, amount FROM run_summaries
        UNION ALL
        SELECT run_id, kind, key, attempt, second, n, amount FROM run_summary_deltas) s
 GROUP BY run_id, kind, key, attempt, second
HAVING sum(n) <> 0 OR sum(amount) <> 0;

-- The rows a statement changed, signed: +1 after it, -1 before it (transition tables).
CREATE FUNCTION run_summaries_changed(op text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE op
        WHEN 'INSERT' THEN 'SELECT 1 AS sign, * FROM new_rows'
        WHEN 'DELETE' THEN 'SELECT -1 AS sign, * FROM old_rows'
        ELSE 'SELECT 1 AS sign, * FROM new_rows UNION ALL SELECT -1, * FROM old_rows' END
$$;

-- billing_jobs: +1 for each row after the statement, -1 for each row before it, grouped and
-- netted, so an update that changes no counted column (a lease, a fence) appends nothing.
-- One function for INSERT, UPDATE and DELETE: only the source of the changed rows differs.
CREATE FUNCTION run_summaries_on_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text := run_summaries_changed(TG_OP);
BEGIN
    EXECUTE format($q$
    WITH c AS MATERIALIZED (%s)
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
            -- A retry counts for the run whose first attempt was declined ('failed' is final,
            -- and dunning retries only follow it, so this join gives the same run every time).
            SELECT o.run_id, 'retry', c.state, c.dunning_attempt, 0, c.sign
              FROM c JOIN billing_jobs o
                ON o.account_id = c.account_id AND o.period_start = c.period_start
               AND o.dunning_attempt = 0 AND o.state = 'failed'
             WHERE c.dunning_attempt > 0
            UNION ALL
            -- A first decline counts under its account's status now; the accounts trigger
            -- moves it when that status changes later.
            SELECT c.run_id, 'dunning', a.status, 0, 0, c.sign
              FROM c JOIN accounts a ON a.id = c.account_id
             WHERE c.state = 'failed' AND c.dunning_attempt = 0) d
     GROUP BY run_id, kind, key, attempt, second
    HAVING sum(sign) <> 0
    $q$, changed);
    RETURN NULL;
END $$;

-- An account's status change moves its earlier first declines from the old status to the
-- new one. A decline of this same transaction (finished_at = now(), the transaction's
-- start) is left out: the jobs trigger counted it under the status it saw at its end, which
-- is already this one (the worker's decline updates job and account in one statement).
CREATE FUNCTION run_summaries_on_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
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
      JOIN billing_jobs j ON j.account_id = s.id
     WHERE j.dunning_attempt = 0 AND j.state = 'failed'
       AND j.finished_at IS DISTINCT FROM now()
     GROUP BY j.run_id, s.status
    HAVING sum(s.sign) <> 0;
    RETURN NULL;
END $$;

CREATE TRIGGER run_summaries_on_account_update AFTER UPDATE ON accounts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION run_summaries_on_accounts();

-- charges: billed per currency of the job's run.
CREATE FUNCTION run_summaries_on_charges() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text := run_summaries_changed(TG_OP);
BEGIN
    EXECUTE format($q$
    INSERT INTO run_summary_deltas (run_id, kind, key, n, amount)
    SELECT j.run_id, 'billed', c.currency::text, sum(c.sign), sum(c.sign * c.amount_cents)
      FROM (%s) c JOIN billing_jobs j ON j.id = c.job_id
     GROUP BY j.run_id, c.currency
    HAVING sum(c.sign) <> 0 OR sum(c.sign * c.amount_cents) <> 0
    $q$, changed);
    RETURN NULL;
END $$;

-- Both tables, each of INSERT, UPDATE and DELETE: run_summaries_on_<table>_<op>, once
-- per statement, with the transition tables that operation has.
DO $$
DECLARE
    t record;
    op record;
BEGIN
    FOR t IN SELECT * FROM (VALUES ('billing_jobs', 'run_summaries_on_jobs'),
                                   ('charges', 'run_summaries_on_charges')) v(tab, fn) LOOP
        FOR op IN SELECT * FROM (VALUES ('INSERT', 'NEW TABLE AS new_rows'),
                                        ('UPDATE', 'OLD TABLE AS old_rows NEW TABLE AS new_rows'),
                                        ('DELETE', 'OLD TABLE AS old_rows')) v(name, refs) LOOP
            EXECUTE format('CREATE TRIGGER %I AFTER %s ON %I REFERENCING %s'
                           ' FOR EACH STATEMENT EXECUTE FUNCTION %I()',
                           'run_summaries_on_' || t.tab || '_' || lower(op.name), op.name,
                           t.tab, op.refs, t.fn);
        END LOOP;
    END LOOP;
END $$;

-- Per-row pages (a run's dead jobs, /jobs?run=&state=) page newest or oldest first by id
-- within a run and state: the index gives them in order, so LIMIT reads only what it shows.
-- It replaces (run_id, state), whose every use it also serves: no extra index to update.
CREATE INDEX billing_jobs_run_state_id_idx ON billing_jobs (run_id, state, id);
DROP INDEX billing_jobs_run_state_idx;

-- The fold: deltas out, summed into run_summaries, in one transaction. SECURITY DEFINER so
-- the least-privilege roles may fold without rights on the summary tables; one folder at a
-- time (a concurrent caller skips: the next fold takes what it left).
CREATE FUNCTION billq_fold_run_summaries() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1651076204, 9) THEN
        RETURN 0;
    END IF;
    WITH d AS (
        DELETE FROM run_summary_deltas RETURNING *
    ), summed AS (
        INSERT INTO run_summaries (run_id, kind, key, attempt, second, n, amount)
        SELECT run_id, kind, key, attempt, second, sum(n), sum(amount)
          FROM d GROUP BY run_id, kind, key, attempt, second
        ON CONFLICT (run_id, kind, key, attempt, second)
        DO UPDATE SET n = run_summaries.n + EXCLUDED.n,
                      amount = run_summaries.amount + EXCLUDED.amount
        RETURNING 1
    )
    SELECT count(*) INTO folded FROM d;
    RETURN folded;
END $$;

-- A run hook's payload (migration 0008) freezes the run's counts and billed money when it
-- settles: from its summaries too, not a count over its jobs inside the settling commit.
CREATE OR REPLACE FUNCTION run_hook_on_settle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_hook_events (run_id, type, payload)
    SELECT NEW.id, 'run.' || NEW.state, to_jsonb(p)
      FROM (SELECT NEW.id AS run_id, NEW.state AS state, NEW.as_of AS as_of,
                   NEW.finished_at AS finished_at, NEW.error AS error,
                   coalesce((SELECT jsonb_object_agg(s.key, s.n) FROM run_summary_totals s
                              WHERE s.run_id = NEW.id AND s.kind = 'state'), '{}') AS jobs,
                   coalesce((SELECT jsonb_object_agg(s.key, s.amount) FROM run_summary_totals s
                              WHERE s.run_id = NEW.id AND s.kind = 'billed'), '{}') AS billed) p;
    RETURN NEW;
END $$;

-- Backfill: existing runs, recounted once (this transaction holds the triggers' tables, so
-- no job changes between the recount and the first delta).
INSERT INTO run_summaries (run_id, kind, key, n)
SELECT run_id, 'state', state, count(*) FROM billing_jobs GROUP BY run_id, state;

INSERT INTO run_summaries (run_id, kind, key, n)
SELECT run_id, 'decline', coalesce(decline_code, last_error, 'unknown'), count(*)
  FROM billing_jobs WHERE state = 'failed' GROUP BY 1, 3;

INSERT INTO run_summaries (run_id, kind, second, n)
SELECT run_id, 'finished', floor(extract(epoch FROM finished_at))::bigint, count(*)
  FROM billing_jobs
 WHERE state IN ('succeeded', 'failed', 'dead', 'already_paid') AND finished_at IS NOT NULL
 GROUP BY 1, 3;

INSERT INTO run_summaries (run_id, kind, key, n, amount)
SELECT j.run_id, 'billed', c.currency, count(*), sum(c.amount_cents)
  FROM charges c JOIN billing_jobs j ON j.id = c.job_id GROUP BY 1, 3;

INSERT INTO run_summaries (run_id, kind, key, attempt, n)
SELECT o.run_id, 'retry', j.state, j.dunning_attempt, count(*)
  FROM billing_jobs j JOIN billing_jobs o
    ON o.account_id = j.account_id AND o.period_start = j.period_start
   AND o.dunning_attempt = 0 AND o.state = 'failed'
 WHERE j.dunning_attempt > 0
 GROUP BY 1, 3, 4;

INSERT INTO run_summaries (run_id, kind, key, n)
SELECT j.run_id, 'dunning', a.status, count(*)
  FROM billing_jobs j JOIN accounts a ON a.id = j.account_id
 WHERE j.state = 'failed' AND j.dunning_attempt = 0
 GROUP BY 1, 3;
