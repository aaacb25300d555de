-- Invoice and credit-note numbers in number order. Past 999,999 a year the numbers grow
-- (0018), and as text '2026-1000000' sorts before '2026-100001'. Listings order by this key
-- instead: the year and the sequence after it as one bigint (year * 10^10 + sequence; the
-- counters are integers, so a sequence stays below 10^10). It reads 'CN-2026-000001' the
-- same way. A text not of that shape (billq makes none) gets key 0 rather than an error.
CREATE FUNCTION billq_number_order(number text) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(substring(number FROM '(\d{1,4})-\d{1,10}$')::bigint * 10000000000
                    + substring(number FROM '-(\d{1,10})$')::bigint, 0)
$$;

-- `billq invoices list` without --account: the first page and every --after page read in
-- index order instead of sorting every invoice. The number breaks ties of malformed texts.
CREATE INDEX invoices_number_order_idx ON invoices (billq_number_order(number), number);
