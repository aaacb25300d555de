-- Bounded reads for the dashboard and `billq jobs|report` on million-job tables, whatever
-- the statistics (autovacuum may be off, and a run grows from nothing faster than it
-- analyzes).

-- Ended jobs of one state, newest first (/jobs?state=failed, `billq jobs --state dead`): the
-- ended twin of billing_jobs_open_idx. Without it a state that is rare among the newest
-- jobs was found by a backward scan of the primary key filtering every job. A job enters it
-- once, at the update that ends it (that update writes every index already).
CREATE INDEX billing_jobs_ended_idx ON billing_jobs (state, id)
    WHERE state IN ('succeeded', 'failed', 'dead', 'already_paid');

-- Refunded per currency of a run's charges (`billq report`, the run page), as summary rows
-- (0009) instead of a join over every refund ever made: kind 'refunded', key the currency,
-- n refunds, amount their sum in minor units, under the run of the refunded charge's job
-- (a refund of a one-off charge belongs to no run). Lookups are LATERAL probes of primary
-- keys, as in 0013.
CREATE FUNCTION run_summaries_on_refunds() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text := run_summaries_changed(TG_OP);
BEGIN
    EXECUTE format($q$
    INSERT INTO run_summary_deltas (run_id, kind, key, n, amount)
    SELECT j.run_id, 'refunded', r.currency::text, sum(r.sign), sum(r.sign * r.amount_cents)
      FROM (%s) r CROSS JOIN LATERAL (
           SELECT b.run_id FROM charges c JOIN billing_jobs b ON b.id = c.job_id
            WHERE c.id = r.charge_id LIMIT 1) j
     WHERE j.run_id IS NOT NULL
     GROUP BY j.run_id, r.currency
    HAVING sum(r.sign) <> 0 OR sum(r.sign * r.amount_cents) <> 0
    $q$, changed);
    RETURN NULL;
END $$;

-- The triggers first: they lock refunds against writes, so the backfill below counts every
-- refund committed before it and the triggers every one after.
DO $$
DECLARE
    op record;
BEGIN
    FOR op IN SELECT * FROM (VALUES ('INSERT', 'NEW TABLE AS new_rows'),
                                    ('UPDATE', 'OLD TABLE AS old_rows NEW TABLE AS new_rows'),
                                    ('DELETE', 'OLD TABLE AS old_rows')) v(name, refs) LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON refunds REFERENCING %s'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION run_summaries_on_refunds()',
                       'run_summaries_on_refunds_' || lower(op.name), op.name, op.refs);
    END LOOP;
END $$;

INSERT INTO run_summary_deltas (run_id, kind, key, n, amount)
SELECT j.run_id, 'refunded', r.currency::text, count(*), sum(r.amount_cents)
  FROM refunds r JOIN charges c ON c.id = r.charge_id JOIN billing_jobs j ON j.id = c.job_id
 WHERE j.run_id IS NOT NULL
 GROUP BY j.run_id, r.currency;
