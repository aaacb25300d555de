-- Drain rates (status, scale-hint, the dashboard's /metrics gauge) and the run page's
-- throughput chart read the last minutes of finished jobs: an index range instead of a
-- scan of every job ever billed.
CREATE INDEX billing_jobs_finished_idx ON billing_jobs (finished_at) WHERE finished_at IS NOT NULL;
