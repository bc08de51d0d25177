-- Version 7: heartbeats. What a process last said about itself, where every other process (and
-- `webhook-app doctor`) can read it: the workers' last poll, whatever host they run on.

CREATE TABLE heartbeats (
    name TEXT PRIMARY KEY,
    seen_at DOUBLE PRECISION NOT NULL
);
