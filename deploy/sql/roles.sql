-- Least-privilege roles for billq. Run once per billq database, as its owner, after
-- `billq migrate` (idempotent). Then create login users in these groups, e.g.:
--   CREATE ROLE billq_worker_1 LOGIN PASSWORD '...' IN ROLE billq_worker;
-- migrator: owns the schema (run `billq migrate` as it or as the database owner).
-- distributor: reads accounts, writes runs and jobs (and completes jobs when reconciling).
-- worker: moves jobs, records charges, invoices and events; cannot alter the schema.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'billq_migrator') THEN
        CREATE ROLE billq_migrator NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'billq_distributor') THEN
        CREATE ROLE billq_distributor NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'billq_worker') THEN
        CREATE ROLE billq_worker NOLOGIN;
    END IF;
END
$$;

GRANT ALL ON SCHEMA public TO billq_migrator;
GRANT ALL ON ALL TABLES IN SCHEMA public TO billq_migrator;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO billq_migrator;

GRANT USAGE ON SCHEMA public TO billq_distributor, billq_worker;
REVOKE CREATE ON SCHEMA public FROM billq_distributor, billq_worker;

-- Distributor (billq distribute, billq reconcile, billq status and the admin commands).
GRANT SELECT ON accounts, charges, invoices, account_events, workers, schema_migrations
    TO billq_distributor;
GRANT SELECT, INSERT, UPDATE ON billing_runs, billing_jobs TO billq_distributor;
GRANT USAGE ON SEQUENCE billing_runs_id_seq, billing_jobs_id_seq TO billq_distributor;
-- Reconciling a job whose charge exists at the gateway records it like a worker would.
GRANT INSERT ON charges, account_events TO billq_distributor;
GRANT INSERT, UPDATE ON invoices, invoice_counters TO billq_distributor;
GRANT UPDATE (next_billing_at, status, dunning_attempt, dunning_next_at, first_declined_at,
              updated_at) ON accounts TO billq_distributor;
GRANT USAGE ON SEQUENCE charges_id_seq, invoices_id_seq, account_events_id_seq
    TO billq_distributor;
-- Blocked accounts of a run; operators' actions with who did them; accounts cancel.
GRANT SELECT, INSERT, UPDATE ON run_blocked TO billq_distributor;
GRANT SELECT, INSERT ON operator_actions TO billq_distributor;
GRANT USAGE ON SEQUENCE operator_actions_id_seq TO billq_distributor;
GRANT UPDATE (cancelled_at, cancelled_by) ON accounts TO billq_distributor;

-- Worker.
GRANT SELECT ON accounts, billing_runs, schema_migrations TO billq_worker;
GRANT UPDATE (next_billing_at, status, dunning_attempt, dunning_next_at, first_declined_at,
              updated_at) ON accounts TO billq_worker;
GRANT SELECT, UPDATE ON billing_jobs TO billq_worker;
GRANT UPDATE (state, finished_at) ON billing_runs TO billq_worker;
GRANT SELECT, INSERT ON charges, account_events TO billq_worker;
GRANT SELECT, INSERT, UPDATE ON invoices, invoice_counters TO billq_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON workers TO billq_worker;
GRANT USAGE ON SEQUENCE charges_id_seq, invoices_id_seq, account_events_id_seq
    TO billq_worker;
GRANT EXECUTE ON FUNCTION billq_next_invoice_number(integer) TO billq_worker, billq_distributor;

-- Run hooks: whoever settles a run writes its event (trigger) and delivers it.
GRANT SELECT, INSERT, UPDATE ON run_hook_events TO billq_distributor, billq_worker;
GRANT USAGE ON SEQUENCE run_hook_events_id_seq TO billq_distributor, billq_worker;
-- When a webhook URL was first configured: older events are skipped, not sent.
GRANT SELECT, INSERT ON run_hook_settings TO billq_distributor, billq_worker;

-- Run summaries (migration 0009): every job, account and charge change appends its deltas
-- (triggers run as the writer); status, runs, report and the dashboard read the totals;
-- billq_fold_run_summaries() folds them (SECURITY DEFINER: no rights on the tables needed).
GRANT INSERT ON run_summary_deltas TO billq_distributor, billq_worker;
GRANT SELECT ON run_summaries, run_summary_deltas, run_summary_totals
    TO billq_distributor, billq_worker;
GRANT EXECUTE ON FUNCTION billq_fold_run_summaries() TO billq_distributor, billq_worker;

-- Refunds: `billq refund` and the API create refund jobs under the charge's row lock (which
-- needs UPDATE on a column); a worker records refunds and their credit notes.
GRANT SELECT ON refunds, credit_notes TO billq_distributor;
GRANT UPDATE (refunded_cents) ON charges TO billq_distributor, billq_worker;
GRANT SELECT, INSERT ON refunds, credit_notes TO billq_worker;
GRANT SELECT, INSERT, UPDATE ON credit_note_counters TO billq_worker;
GRANT USAGE ON SEQUENCE refunds_id_seq, credit_notes_id_seq TO billq_worker;
GRANT EXECUTE ON FUNCTION billq_next_credit_note_number(integer) TO billq_worker;

-- billq api and billq charge run as the distributor: one-off jobs and the callers'
-- idempotency records (written in the transaction that creates the job).
GRANT SELECT, INSERT, UPDATE ON api_idempotency_keys TO billq_distributor;
