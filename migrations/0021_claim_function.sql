-- The claim in one round trip: the account locks and the fenced claim with its gate, one
-- call instead of BEGIN, the lock statement, the claim and COMMIT (four round trips per
-- claimed batch). Measured with bench.pgstats (docs/scaling.md).
--
-- Claims of one account serialise on its row, so the gate's subqueries see every claim
-- committed before the lock was granted: two jobs for one period (a replay beside a dunning
-- retry) are never both charging. That needs the claim to take its snapshot *after* the
-- lock, as a second statement did under READ COMMITTED. A VOLATILE function gets the same:
-- each query it runs takes a fresh snapshot (the manual, "Function Volatility Categories"),
-- so the claim below sees what committed while it waited for the locks. (It must never be
-- STABLE: it would then read the caller's snapshot, taken before the locks.)
--
-- One statement claims a whole batch; each input row carries its ordinal so the caller
-- maps results back to deliveries (two copies of one job in a batch: only one claims).
-- It also returns THE GATE: whether money may move for the job (``ClaimedJob.gate``).
CREATE FUNCTION billq_claim(
    p_job_ids bigint[], p_account_ids bigint[], p_keys text[], p_redelivered boolean[],
    p_handoff integer[], p_ords integer[], p_worker text, p_lease_s double precision,
    p_stale_s double precision
) RETURNS TABLE (
    ord integer, id bigint, kind text, account_id bigint, period_start date, period_end date,
    idempotency_key text, amount_cents integer, currency bpchar, attempts integer,
    dunning_attempt smallint, attempt_base integer, started_at timestamptz,
    frozen_payment_method text, frozen_customer text, refund_of bigint, account_status text,
    payment_method text, gateway_customer text, first_declined_at timestamptz,
    cancelled_before boolean, paid_by text, overlaps_paid text, busy_with bigint,
    refund_charge text, refunded_by text
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    -- In id order: two claims locking overlapping accounts never deadlock.
    PERFORM 1 FROM accounts a WHERE a.id = ANY(p_account_ids) ORDER BY a.id FOR NO KEY UPDATE;
    RETURN QUERY
    WITH m AS (
        SELECT * FROM unnest(p_job_ids, p_account_ids, p_keys, p_redelivered, p_handoff,
                             p_ords) AS m(job_id, account_id, idempotency_key, redelivered,
                                          handoff, ord)
    ), claimed AS (
        UPDATE billing_jobs j
           SET state = 'processing',
               updated_at = now(),
               attempts = j.attempts + 1,
               locked_by = p_worker,
               locked_until = now() + make_interval(secs => p_lease_s),
               started_at = coalesce(j.started_at, now())
          FROM m
         WHERE j.id = m.job_id AND j.account_id = m.account_id
           AND j.idempotency_key = m.idempotency_key
           AND (j.state IN ('pending', 'published')
                OR (j.state = 'retrying' AND j.attempts = m.handoff)
                OR (j.state = 'processing'
                    AND (j.locked_until < now() OR m.redelivered OR j.attempts = m.handoff
                         OR NOT EXISTS (
                             SELECT 1 FROM workers w
                              WHERE w.id = j.locked_by
                                AND w.last_heartbeat > now() - make_interval(secs => p_stale_s)))))
        RETURNING m.ord, j.id, j.kind, j.account_id, j.period_start, j.period_end,
                  j.idempotency_key, j.amount_cents, j.currency, j.attempts, j.dunning_attempt,
                  j.attempt_base, j.started_at, j.payment_method AS frozen_payment_method,
                  j.gateway_customer AS frozen_customer, j.refund_of
    )
    SELECT c.*, a.status AS account_status,
           coalesce(c.frozen_payment_method, a.payment_method) AS payment_method,
           CASE WHEN c.frozen_payment_method IS NULL THEN a.gateway_customer
                ELSE c.frozen_customer END AS gateway_customer,
           a.first_declined_at,
           (a.cancelled_at IS NOT NULL
            AND (c.period_start::timestamp AT TIME ZONE 'UTC') >= a.cancelled_at) AS cancelled_before,
           -- A period is paid by its period charge; a one-off by the charge under its own key.
           CASE WHEN c.kind = 'period'
                THEN (SELECT ch.gateway_charge_id FROM charges ch
                       WHERE ch.account_id = c.account_id AND ch.period_start = c.period_start
                         AND ch.kind = 'period')
                ELSE (SELECT ch.gateway_charge_id FROM charges ch
                       WHERE ch.idempotency_key = c.idempotency_key) END AS paid_by,
           -- Another period's charge covering some of these days (the anchor or interval
           -- changed in between): charging would bill those days twice. A one-off covers none.
           CASE WHEN c.kind = 'period'
                THEN (SELECT ch.gateway_charge_id FROM charges ch
                       WHERE ch.account_id = c.account_id AND ch.kind = 'period'
                         AND ch.period_start <> c.period_start
                         AND daterange(ch.period_start, ch.period_end)
                             && daterange(c.period_start, c.period_end)
                       LIMIT 1) END AS overlaps_paid,
           -- Busy: a live claim on this period or on one that shares days with it — held from
           -- before, or taken in this very statement (whose subqueries cannot see its own
           -- updates): of two such jobs in one batch only the lower id may charge. A one-off
           -- is its key's only job.
           CASE WHEN c.kind = 'period' THEN coalesce(
                (SELECT o.id FROM billing_jobs o
                  WHERE o.account_id = c.account_id AND o.kind = 'period'
                    AND daterange(o.period_start, o.period_end)
                        && daterange(c.period_start, c.period_end)
                    AND o.id <> c.id AND o.state = 'processing' AND o.locked_until > now()
                  LIMIT 1),
                (SELECT min(o.id) FROM claimed o
                  WHERE o.account_id = c.account_id AND o.kind = 'period' AND o.id < c.id
                    AND daterange(o.period_start, o.period_end)
                        && daterange(c.period_start, c.period_end))) END AS busy_with,
           -- A refund job: the gateway id of the charge it refunds, and its recorded refund.
           (SELECT ch.gateway_charge_id FROM charges ch WHERE ch.id = c.refund_of) AS refund_charge,
           (SELECT r.gateway_refund_id FROM refunds r
             WHERE c.refund_of IS NOT NULL AND r.idempotency_key = c.idempotency_key) AS refunded_by
      FROM claimed c LEFT JOIN accounts a ON a.id = c.account_id;
END
$$;
