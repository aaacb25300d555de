-- The worker's gateway circuit breaker, as its heartbeat last saw it ('closed' or 'open'):
-- `billq workers` shows which workers hold their work because the gateway is failing.
ALTER TABLE workers ADD COLUMN breaker text NOT NULL DEFAULT 'closed';
