-- Dunning, invoices, account events, scheduled runs.

-- Each dunning attempt is its own job with its own gateway key (billq_{id}_{date}_dN);
-- the period itself stays unique in charges, so it is charged at most once.
ALTER TABLE billing_jobs ADD COLUMN dunning_attempt smallint NOT NULL DEFAULT 0;
ALTER TABLE billing_jobs DROP CONSTRAINT billing_jobs_account_id_period_start_key;
ALTER TABLE billing_jobs ADD CONSTRAINT billing_jobs_account_period_attempt_key
    UNIQUE (account_id, period_start, dunning_attempt);
ALTER TABLE billing_jobs ADD COLUMN decline_code text;

ALTER TABLE accounts ADD COLUMN dunning_attempt smallint NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN dunning_next_at timestamptz;
ALTER TABLE accounts ADD COLUMN first_declined_at timestamptz;

ALTER TABLE billing_runs DROP CONSTRAINT billing_runs_state_check;
ALTER TABLE billing_runs ADD CONSTRAINT billing_runs_state_check
    CHECK (state IN ('scheduled', 'running', 'published', 'completed',
                     'completed_with_failures', 'failed'));
CREATE INDEX billing_runs_open_idx ON billing_runs (state) WHERE state IN ('scheduled', 'published');

CREATE TABLE account_events (
    id           bigserial   PRIMARY KEY,
    account_id   bigint      NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    kind         text        NOT NULL,   -- charged, declined, suspended, reactivated, ...
    from_status  text,
    to_status    text,
    reason       text,
    job_id       bigint
);
CREATE INDEX account_events_account_idx ON account_events (account_id, at);

-- Gap-free per-year numbering: the counter row is updated in the same transaction as the
-- invoice, so a rolled-back transaction gives its number back.
CREATE TABLE invoice_counters (
    year  integer PRIMARY KEY,
    last  integer NOT NULL
);

CREATE FUNCTION billq_next_invoice_number(y integer) RETURNS text
LANGUAGE sql VOLATILE AS $$
    INSERT INTO invoice_counters (year, last) VALUES (y, 1)
    ON CONFLICT (year) DO UPDATE SET last = invoice_counters.last + 1
    RETURNING y::text || '-' || lpad(last::text, 6, '0')
$$;

CREATE TABLE invoices (
    id                 bigserial   PRIMARY KEY,
    number             text        NOT NULL UNIQUE,
    account_id         bigint      NOT NULL,
    period_start       date        NOT NULL,
    period_end         date        NOT NULL,
    amount_cents       integer     NOT NULL,
    currency           char(3)     NOT NULL,
    status             text        NOT NULL CHECK (status IN ('open', 'paid', 'uncollectible')),
    gateway_charge_id  text,
    job_id             bigint,
    created_at         timestamptz NOT NULL DEFAULT now(),
    paid_at            timestamptz,
    UNIQUE (account_id, period_start)
);
