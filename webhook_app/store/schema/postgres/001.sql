-- Version 1: deliveries, their jobs, attempts, decisions, per-order action claims, and the
-- rate-limit window all workers share.

CREATE TABLE deliveries (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        identity TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        resource_type TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        order_id TEXT,
        received_at DOUBLE PRECISION NOT NULL,
        secret_label TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BYTEA NOT NULL,
        status TEXT NOT NULL,
        replay_of BIGINT REFERENCES deliveries(id)
    );

CREATE INDEX deliveries_order ON deliveries(order_id);

CREATE INDEX deliveries_received ON deliveries(received_at);

CREATE TABLE jobs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        delivery_id BIGINT NOT NULL UNIQUE REFERENCES deliveries(id),
        order_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_expires_at DOUBLE PRECISION,
        last_error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION
    );

CREATE INDEX jobs_pending ON jobs(next_attempt_at, id) WHERE state = 'pending';

CREATE INDEX jobs_running ON jobs(lease_expires_at) WHERE state = 'running';

CREATE INDEX jobs_order ON jobs(order_id);

CREATE TABLE attempts (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id BIGINT NOT NULL REFERENCES jobs(id),
        number INTEGER NOT NULL,
        worker TEXT,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        outcome TEXT,
        error TEXT
    );

CREATE INDEX attempts_job ON attempts(job_id);

CREATE TABLE decisions (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id BIGINT NOT NULL REFERENCES jobs(id),
        delivery_id BIGINT NOT NULL REFERENCES deliveries(id),
        order_id TEXT NOT NULL,
        rule TEXT NOT NULL,
        action TEXT NOT NULL,
        reason TEXT NOT NULL,
        guard TEXT,
        outcome TEXT NOT NULL,
        mode TEXT NOT NULL,
        wallet_entry_id TEXT,
        decided_at DOUBLE PRECISION NOT NULL
    );

CREATE INDEX decisions_delivery ON decisions(delivery_id);

CREATE INDEX decisions_order ON decisions(order_id);

CREATE TABLE order_actions (
        order_id TEXT NOT NULL,
        action TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'in_flight', 'done')),
        owner TEXT,
        lease_expires_at DOUBLE PRECISION,
        uncertain INTEGER NOT NULL DEFAULT 0,
        job_id BIGINT,
        wallet_entry_id TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (order_id, action)
    );

CREATE TABLE rate_limit_slots (
        key TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );

CREATE INDEX rate_limit_slots_key_at ON rate_limit_slots(key, at);
