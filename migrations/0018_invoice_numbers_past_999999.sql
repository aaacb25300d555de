-- lpad() truncates: the year's 1,000,000th invoice came out as '2026-100000', collided with
-- the 100,000th and could never be recorded (found by a 1,000,000-account soak). Pad to six
-- digits and let larger numbers grow. No stored number is wrong: every truncated one failed
-- on the unique key.
CREATE OR REPLACE FUNCTION billq_next_invoice_number(y integer) RETURNS text
LANGUAGE sql VOLATILE AS $$
    INSERT INTO invoice_counters (year, last) VALUES (y, 1)
    ON CONFLICT (year) DO UPDATE SET last = invoice_counters.last + 1
    RETURNING y::text || '-' || lpad(last::text, greatest(6, length(last::text)), '0')
$$;

CREATE OR REPLACE FUNCTION billq_next_credit_note_number(y integer) RETURNS text
LANGUAGE sql VOLATILE AS $$
    INSERT INTO credit_note_counters (year, last) VALUES (y, 1)
    ON CONFLICT (year) DO UPDATE SET last = credit_note_counters.last + 1
    RETURNING 'CN-' || y::text || '-' || lpad(last::text, greatest(6, length(last::text)), '0')
$$;
