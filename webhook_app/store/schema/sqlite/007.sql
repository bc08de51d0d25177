-- Version 7: what one process of the service found, for the others to read (the web side's
-- /readyz and the metrics show what the worker found). One row per name; for now
-- `commercelayer_credentials`: `ok` or `refused`, since when, why, and which worker said so.

CREATE TABLE service_status (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    reason TEXT,
    source TEXT,
    updated_at REAL NOT NULL
);
