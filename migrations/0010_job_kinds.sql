-- Job kinds (issue 14). Besides the period a distribution run bills, a job may be a one-off
-- charge an application asked for (`billq api`'s POST /v1/charges, `billq charge`); 'refund'
-- is reserved for refund jobs. Every kind goes through the same pipeline: the jobs table is
-- its outbox, a worker claims it through the gate, the record step is fenced.
--
-- The period's exactly-once guarantee is unchanged: at most one job per (account, period,
-- dunning attempt) and one charge and one invoice per (account, period) — among period rows.
-- A one-off is unique by its gateway idempotency key (billq_{account}_oneoff_{key hash}),
-- which billing_jobs and charges already hold unique. Every new unique index is built
-- before the constraint it replaces is dropped, in the migration's one transaction, so the
-- guarantee never lapses.

ALTER TABLE billing_jobs ADD COLUMN kind text NOT NULL DEFAULT 'period'
    CONSTRAINT billing_jobs_kind_check CHECK (kind IN ('period', 'oneoff', 'refund'));
-- Only period jobs belong to a distribution run; a one-off is created on its own.
ALTER TABLE billing_jobs ALTER COLUMN run_id DROP NOT NULL;
ALTER TABLE billing_jobs ADD CONSTRAINT billing_jobs_period_has_run
    CHECK (kind <> 'period' OR run_id IS NOT NULL);
-- The caller's description of a one-off charge (returned by the API, shown on its invoice).
ALTER TABLE billing_jobs ADD COLUMN description text;

CREATE UNIQUE INDEX billing_jobs_period_key ON billing_jobs (account_id, period_start, dunning_attempt)
    WHERE kind = 'period';
ALTER TABLE billing_jobs DROP CONSTRAINT billing_jobs_account_period_attempt_key;
-- Non-period jobs of an account (GET /v1/accounts/{id}/charges, the account page).
CREATE INDEX billing_jobs_account_other_idx ON billing_jobs (account_id, id) WHERE kind <> 'period';

-- A charge row's kind is its job's (copied by the record step).
ALTER TABLE charges ADD COLUMN kind text NOT NULL DEFAULT 'period'
    CONSTRAINT charges_kind_check CHECK (kind IN ('period', 'oneoff', 'refund'));
CREATE UNIQUE INDEX charges_period_key ON charges (account_id, period_start) WHERE kind = 'period';
ALTER TABLE charges DROP CONSTRAINT charges_account_id_period_start_key;
CREATE INDEX charges_account_other_idx ON charges (account_id, id) WHERE kind <> 'period';

-- One invoice per period as before; a one-off charge gets its own invoice, one per job.
ALTER TABLE invoices ADD COLUMN kind text NOT NULL DEFAULT 'period'
    CONSTRAINT invoices_kind_check CHECK (kind IN ('period', 'oneoff', 'refund'));
ALTER TABLE invoices ADD COLUMN description text;
CREATE UNIQUE INDEX invoices_period_key ON invoices (account_id, period_start) WHERE kind = 'period';
ALTER TABLE invoices DROP CONSTRAINT invoices_account_id_period_start_key;
CREATE UNIQUE INDEX invoices_job_key ON invoices (job_id) WHERE kind <> 'period';

-- The API's idempotency records (Stripe's scheme): the caller's Idempotency-Key, a hash of
-- what it asked for, and the first answer, written in the transaction that creates the job.
-- The primary key makes a concurrent duplicate wait for the first and then replay its
-- answer, never create a second job. A key is global, not per endpoint or token: the same
-- key for another request is a conflict (409), and tokens rotate without losing replays.
CREATE TABLE api_idempotency_keys (
    key           text        PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    endpoint      text        NOT NULL,   -- e.g. 'POST /v1/charges'
    request_hash  text        NOT NULL,   -- sha256 of the endpoint and the canonical body
    status        smallint    NOT NULL,
    response      jsonb       NOT NULL,
    job_id        bigint      REFERENCES billing_jobs (id),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Run summaries (migration 0009) count the jobs and charges of distribution runs. A job of
-- no run (a one-off) is not part of any: the triggers leave it out (its summary row would
-- have no run), and a dunning retry is matched to its period's first decline only.
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
            SELECT o.run_id, 'retry', c.state, c.dunning_attempt, 0, c.sign
              FROM c JOIN billing_jobs o
                ON o.account_id = c.account_id AND o.period_start = c.period_start
               AND o.kind = 'period' AND o.dunning_attempt = 0 AND o.state = 'failed'
             WHERE c.dunning_attempt > 0
            UNION ALL
            SELECT c.run_id, 'dunning', a.status, 0, 0, c.sign
              FROM c JOIN accounts a ON a.id = c.account_id
             WHERE c.state = 'failed' AND c.dunning_attempt = 0) d
     GROUP BY run_id, kind, key, attempt, second
    HAVING sum(sign) <> 0
    $q$, changed);
    RETURN NULL;
END $$;

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
      JOIN billing_jobs j ON j.account_id = s.id
     WHERE j.run_id IS NOT NULL AND j.dunning_attempt = 0 AND j.state = 'failed'
       AND j.finished_at IS DISTINCT FROM now()
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
      FROM (%s) c JOIN billing_jobs j ON j.id = c.job_id
     WHERE j.run_id IS NOT NULL
     GROUP BY j.run_id, c.currency
    HAVING sum(c.sign) <> 0 OR sum(c.sign * c.amount_cents) <> 0
    $q$, changed);
    RETURN NULL;
END $$;
