-- billq core schema. Table and column names listed in the README are a public contract.

CREATE TABLE accounts (
    id                  bigint      PRIMARY KEY,          -- the integrator's own account id
    name                text        NOT NULL,
    email               text        NOT NULL,
    amount_cents        integer     NOT NULL CHECK (amount_cents > 0),
    currency            char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    billing_interval    text        NOT NULL CHECK (billing_interval IN ('month', 'year')),
    billing_anchor_day  smallint    NOT NULL CHECK (billing_anchor_day BETWEEN 1 AND 31),
    next_billing_at     timestamptz NOT NULL,
    status              text        NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'past_due', 'suspended', 'cancelled')),
    payment_method      text        NOT NULL,
    gateway_customer    text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The due scan walks only due rows: keyset on (next_billing_at, id) over billable accounts.
CREATE INDEX accounts_due_idx ON accounts (next_billing_at, id)
    WHERE status IN ('active', 'past_due');

CREATE TABLE billing_runs (
    id           bigserial   PRIMARY KEY,
    as_of        timestamptz NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    state        text        NOT NULL DEFAULT 'running'
                 CHECK (state IN ('running', 'published', 'completed',
                                  'completed_with_failures', 'failed')),
    due          integer     NOT NULL DEFAULT 0,
    published    integer     NOT NULL DEFAULT 0,
    error        text
);

CREATE TABLE billing_jobs (
    id               bigserial   PRIMARY KEY,
    run_id           bigint      NOT NULL REFERENCES billing_runs (id),
    -- No foreign key to accounts: money records outlive a deleted account.
    account_id       bigint      NOT NULL,
    period_start     date        NOT NULL,
    period_end       date        NOT NULL CHECK (period_end > period_start),
    idempotency_key  text        NOT NULL UNIQUE,
    -- Snapshot at distribution so every retry sends the gateway identical parameters.
    amount_cents     integer     NOT NULL CHECK (amount_cents > 0),
    currency         char(3)     NOT NULL,
    state            text        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'published', 'processing', 'succeeded',
                                      'retrying', 'failed', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,   -- also the fencing token of the claim
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),  -- last state change (reconciler)
    locked_by        text,
    locked_until     timestamptz,
    UNIQUE (account_id, period_start)
);

CREATE INDEX billing_jobs_run_state_idx ON billing_jobs (run_id, state);
-- Outbox and reconciler scans touch only the few non-terminal jobs.
CREATE INDEX billing_jobs_open_idx ON billing_jobs (state, id)
    WHERE state IN ('pending', 'published', 'processing', 'retrying');

CREATE TABLE charges (
    id                 bigserial   PRIMARY KEY,
    job_id             bigint      NOT NULL UNIQUE REFERENCES billing_jobs (id),
    account_id         bigint      NOT NULL,
    period_start       date        NOT NULL,
    amount_cents       integer     NOT NULL,
    currency           char(3)     NOT NULL,
    idempotency_key    text        NOT NULL UNIQUE,
    gateway_charge_id  text        NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- The exactly-once promise, enforced by the database itself.
    UNIQUE (account_id, period_start)
);

CREATE TABLE workers (
    id              text        PRIMARY KEY,
    hostname        text        NOT NULL,
    pid             integer     NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    in_flight       integer     NOT NULL DEFAULT 0,
    handled         bigint      NOT NULL DEFAULT 0
);
