-- Money safety by construction: frozen gateway parameters, operator cancellations, the
-- one gate's "already paid" outcome, catch-up pacing, blocked accounts.

-- Every call under one key sends byte-identical parameters: the card and customer are
-- frozen on the job when it is created (amount and currency already were).
ALTER TABLE billing_jobs ADD COLUMN payment_method text;
ALTER TABLE billing_jobs ADD COLUMN gateway_customer text;
UPDATE billing_jobs j SET payment_method = a.payment_method, gateway_customer = a.gateway_customer
  FROM accounts a WHERE a.id = j.account_id AND j.payment_method IS NULL;

-- An operator's cancel is final: no dead-letter replay or retry revives the job.
ALTER TABLE billing_jobs ADD COLUMN cancelled_at timestamptz;
ALTER TABLE billing_jobs ADD COLUMN cancelled_by text;

-- 'already_paid': the gate found the period paid by another job; nothing was charged.
ALTER TABLE billing_jobs DROP CONSTRAINT billing_jobs_state_check;
ALTER TABLE billing_jobs ADD CONSTRAINT billing_jobs_state_check
    CHECK (state IN ('pending', 'published', 'processing', 'succeeded', 'retrying', 'failed',
                     'dead', 'already_paid'));

-- A cancellation takes effect at cancelled_at: no period that starts at or after it is billed.
ALTER TABLE accounts ADD COLUMN cancelled_at timestamptz;
UPDATE accounts SET cancelled_at = updated_at WHERE status = 'cancelled';
-- Catch-up pacing: when the account last got a job for a new period (wall clock).
ALTER TABLE accounts ADD COLUMN last_period_job_at timestamptz;

-- Due accounts a run could not give a job, with the reason (distribute --json, report).
CREATE TABLE run_blocked (
    run_id        bigint      NOT NULL REFERENCES billing_runs (id),
    account_id    bigint      NOT NULL,
    period_start  date        NOT NULL,
    job_id        bigint,
    reason        text        NOT NULL,
    PRIMARY KEY (run_id, account_id)
);
ALTER TABLE billing_runs ADD COLUMN blocked integer NOT NULL DEFAULT 0;
ALTER TABLE billing_runs ADD COLUMN future_periods integer NOT NULL DEFAULT 0;

-- Operators' actions, with who did them (CLI user, dashboard login).
CREATE TABLE operator_actions (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text        NOT NULL,
    action     text        NOT NULL,
    target     text        NOT NULL,
    outcome    text        NOT NULL
);
