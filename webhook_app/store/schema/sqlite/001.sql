-- Version 1: deliveries, their jobs, attempts, decisions and per-order action claims. (The
-- rate-limit window is per process on SQLite: one host, one worker.)

CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    order_id TEXT,
    received_at REAL NOT NULL,
    secret_label TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    status TEXT NOT NULL,
    replay_of INTEGER REFERENCES deliveries(id)
    );

CREATE INDEX deliveries_order ON deliveries(order_id);

CREATE INDEX deliveries_received ON deliveries(received_at);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL UNIQUE REFERENCES deliveries(id),
    order_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
    );

CREATE INDEX jobs_pending ON jobs(next_attempt_at) WHERE state = 'pending';

CREATE INDEX jobs_running ON jobs(lease_expires_at) WHERE state = 'running';

CREATE INDEX jobs_order ON jobs(order_id);

CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    number INTEGER NOT NULL,
    worker TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT,
    error TEXT
    );

CREATE INDEX attempts_job ON attempts(job_id);

CREATE TABLE decisions (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
    order_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    guard TEXT,
    outcome TEXT NOT NULL,
    mode TEXT NOT NULL,
    wallet_entry_id TEXT,
    decided_at REAL NOT NULL
    );

CREATE INDEX decisions_delivery ON decisions(delivery_id);

CREATE INDEX decisions_order ON decisions(order_id);

CREATE TABLE order_actions (
    order_id TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'in_flight', 'done')),
    owner TEXT,
    lease_expires_at REAL,
    uncertain INTEGER NOT NULL DEFAULT 0,
    job_id INTEGER,
    wallet_entry_id TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (order_id, action)
    );
