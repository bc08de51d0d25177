-- Version 3: jobs_pending orders by (next_attempt_at, id), as PostgreSQL's always did.

DROP INDEX IF EXISTS jobs_pending;

CREATE INDEX jobs_pending ON jobs(next_attempt_at, id) WHERE state = 'pending';
