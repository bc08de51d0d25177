-- Version 10: agency mode (webhook_app/organizations.py). Every delivery, job, decision, order
-- action and operation belongs to an organization: its slug, '' for the single organization of a
-- deployment without WEBHOOK_APP_ORGANIZATIONS (every older row). An order's action claim is per
-- organization. org_turns: whose turn it is to have a job claimed (the worker goes round the
-- organizations with due jobs, so one's backlog does not hold up another's next job).

ALTER TABLE deliveries ADD COLUMN organization TEXT NOT NULL DEFAULT '';

ALTER TABLE jobs ADD COLUMN organization TEXT NOT NULL DEFAULT '';

ALTER TABLE decisions ADD COLUMN organization TEXT NOT NULL DEFAULT '';

ALTER TABLE operations ADD COLUMN organization TEXT NOT NULL DEFAULT '';

ALTER TABLE order_actions ADD COLUMN organization TEXT NOT NULL DEFAULT '';

ALTER TABLE order_actions DROP CONSTRAINT order_actions_pkey;

ALTER TABLE order_actions ADD PRIMARY KEY (organization, order_id, action);

CREATE INDEX jobs_organization_pending ON jobs(organization, next_attempt_at, id) WHERE state = 'pending';

CREATE INDEX deliveries_organization ON deliveries(organization, id);

CREATE TABLE org_turns (
        organization TEXT PRIMARY KEY,
        turn BIGINT NOT NULL
    );
