-- Version 10: agency mode (webhook_app/organizations.py). Every delivery, job, decision, order
-- action and operation belongs to an organization: its slug, '' for the single organization of a
-- deployment without WEBHOOK_APP_ORGANIZATIONS (every older row). An order's action claim is per
-- organization. org_turns: whose turn it is to have a job claimed (the worker goes round the
-- organizations with due jobs, so one's backlog does not hold up another's next job).

ALTER TABLE deliveries ADD COLUMN organization TEXT NOT NULL DEFAULT '';

ALTER TABLE jobs ADD COLUMN organization TEXT NOT NULL DEFAULT '';

ALTER TABLE decisions ADD COLUMN organization TEXT NOT NULL DEFAULT '';

ALTER TABLE operations ADD COLUMN organization TEXT NOT NULL DEFAULT '';

CREATE TABLE order_actions_10 (
    order_id TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'in_flight', 'done')),
    owner TEXT,
    lease_expires_at REAL,
    uncertain INTEGER NOT NULL DEFAULT 0,
    job_id INTEGER,
    wallet_entry_id TEXT,
    updated_at REAL NOT NULL,
    organization TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (organization, order_id, action)
    );

INSERT INTO order_actions_10 (organization, order_id, action, state, owner, lease_expires_at, uncertain, job_id,
    wallet_entry_id, updated_at)
    SELECT '', order_id, action, state, owner, lease_expires_at, uncertain, job_id, wallet_entry_id, updated_at
    FROM order_actions;

DROP TABLE order_actions;

ALTER TABLE order_actions_10 RENAME TO order_actions;

CREATE INDEX jobs_organization_pending ON jobs(organization, next_attempt_at, id) WHERE state = 'pending';

CREATE INDEX deliveries_organization ON deliveries(organization, id);

CREATE TABLE org_turns (
    organization TEXT PRIMARY KEY,
    turn INTEGER NOT NULL
    );
