-- Refunds (issue 14). A refund is a job of kind 'refund' (0010) on one recorded charge,
-- through the same pipeline as a charge: the jobs table is its outbox, a worker claims it
-- through the gate, calls the gateway's refund API under the job's own key
-- (billq_refund_{charge}_{n}), and the record step is fenced by the claim's token.

-- The charge a refund job gives money back from (NULL for every other kind).
ALTER TABLE billing_jobs ADD COLUMN refund_of bigint REFERENCES charges (id);
CREATE INDEX billing_jobs_refund_of_idx ON billing_jobs (refund_of) WHERE refund_of IS NOT NULL;

-- What has been given back of each charge. The record step adds a refund's amount here in
-- its transaction: the UPDATE takes the charge's row lock, so concurrent refunds of one
-- charge serialise, and the constraint refuses a sum beyond the charge whatever the
-- interleaving.
ALTER TABLE charges ADD COLUMN refunded_cents integer NOT NULL DEFAULT 0;
ALTER TABLE charges ADD CONSTRAINT charges_refunded_within_amount
    CHECK (refunded_cents BETWEEN 0 AND amount_cents);

-- One row per refund the gateway made, recorded exactly once (job, key and gateway id unique).
CREATE TABLE refunds (
    id                 bigserial   PRIMARY KEY,
    job_id             bigint      NOT NULL UNIQUE REFERENCES billing_jobs (id),
    charge_id          bigint      NOT NULL REFERENCES charges (id),
    account_id         bigint      NOT NULL,
    amount_cents       integer     NOT NULL CHECK (amount_cents > 0),  -- ISO minor units
    currency           char(3)     NOT NULL,
    gateway_refund_id  text        NOT NULL UNIQUE,
    idempotency_key    text        NOT NULL UNIQUE,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_charge_idx ON refunds (charge_id);
CREATE INDEX refunds_created_idx ON refunds (created_at);

-- Credit notes: each refund credits the invoice of its charge. Numbered gap-free per year in
-- their own series (CN-2026-000001), beside the invoices' counter, in the same transaction.
CREATE TABLE credit_note_counters (
    year  integer PRIMARY KEY,
    last  integer NOT NULL
);

CREATE FUNCTION billq_next_credit_note_number(y integer) RETURNS text
LANGUAGE sql VOLATILE AS $$
    INSERT INTO credit_note_counters (year, last) VALUES (y, 1)
    ON CONFLICT (year) DO UPDATE SET last = credit_note_counters.last + 1
    RETURNING 'CN-' || y::text || '-' || lpad(last::text, 6, '0')
$$;

CREATE TABLE credit_notes (
    id            bigserial   PRIMARY KEY,
    number        text        NOT NULL UNIQUE,
    invoice_id    bigint      REFERENCES invoices (id),  -- NULL: the charge has no invoice
    refund_id     bigint      NOT NULL UNIQUE REFERENCES refunds (id),
    account_id    bigint      NOT NULL,
    amount_cents  integer     NOT NULL CHECK (amount_cents > 0),
    currency      char(3)     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_notes_invoice_idx ON credit_notes (invoice_id);

-- What the invoice's credit notes add up to (shown with it; never more than it was paid).
ALTER TABLE invoices ADD COLUMN credited_cents integer NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD CONSTRAINT invoices_credited_within_amount
    CHECK (credited_cents BETWEEN 0 AND amount_cents);
