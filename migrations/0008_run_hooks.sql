-- Run hooks: when a run settles (completed, completed_with_failures, failed) an event is
-- written to this outbox in the same transaction, and delivered at least once to
-- BILLQ_RUN_WEBHOOK_URL by whoever settles runs (shared/hooks.py).
CREATE TABLE run_hook_events (
    id               bigserial   PRIMARY KEY,
    -- What a receiver de-duplicates on: the same on every retry of this event.
    event_id         text        NOT NULL UNIQUE DEFAULT 'evt_' || replace(gen_random_uuid()::text, '-', ''),
    run_id           bigint      NOT NULL REFERENCES billing_runs (id),
    type             text        NOT NULL,
    -- The run's summary frozen at settlement, so every retry sends the same body.
    payload          jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    state            text        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    delivered_at     timestamptz
);
CREATE INDEX run_hook_events_due ON run_hook_events (next_attempt_at) WHERE state = 'pending';
CREATE INDEX run_hook_events_run ON run_hook_events (run_id);

-- A trigger, not a statement at each call site: runs settle through several paths
-- (SETTLE_RUN from workers, the CLI and orphan repair; FINISH_RUN and COMPLETE_EMPTY_RUN
-- from the distributor), and every one must write the event in its own transaction.
CREATE FUNCTION run_hook_on_settle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_hook_events (run_id, type, payload)
    SELECT NEW.id, 'run.' || NEW.state,
           jsonb_build_object(
               'run_id', NEW.id,
               'state', NEW.state,
               'as_of', to_jsonb(NEW.as_of),
               'finished_at', to_jsonb(NEW.finished_at),
               'error', NEW.error,
               'jobs', coalesce((SELECT jsonb_object_agg(s.state, s.n)
                                   FROM (SELECT state, count(*) AS n FROM billing_jobs
                                          WHERE run_id = NEW.id GROUP BY state) s),
                                '{}'::jsonb),
               'billed', coalesce((SELECT jsonb_object_agg(b.currency, b.amount_cents)
                                     FROM (SELECT c.currency, sum(c.amount_cents)::bigint
                                                  AS amount_cents
                                             FROM charges c JOIN billing_jobs j ON j.id = c.job_id
                                            WHERE j.run_id = NEW.id GROUP BY c.currency) b),
                                  '{}'::jsonb));
    RETURN NEW;
END $$;

CREATE TRIGGER run_hook_on_settle
    AFTER UPDATE OF state ON billing_runs
    FOR EACH ROW
    WHEN (NEW.state IN ('completed', 'completed_with_failures', 'failed')
          AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION run_hook_on_settle();
