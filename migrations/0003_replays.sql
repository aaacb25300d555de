-- Replaying a dead job gives it a fresh attempt budget without resetting the fencing token.
ALTER TABLE billing_jobs ADD COLUMN attempt_base integer NOT NULL DEFAULT 0;
ALTER TABLE billing_jobs ADD COLUMN replays integer NOT NULL DEFAULT 0;
