-- Several distributors (--shard K/N) feed one run; it is published when all N finished.
ALTER TABLE billing_runs ADD COLUMN shards smallint NOT NULL DEFAULT 1;
ALTER TABLE billing_runs ADD COLUMN shards_done smallint NOT NULL DEFAULT 0;
