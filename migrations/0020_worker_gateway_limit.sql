-- The worker's adaptive limit on charges in flight at the gateway, as its heartbeat last saw
-- it: below BILLQ_CONCURRENCY while the gateway answers 429 (rate limited). NULL from a
-- worker that does not report it.
ALTER TABLE workers ADD COLUMN gateway_limit integer;
