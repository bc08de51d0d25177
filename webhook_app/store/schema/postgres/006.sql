-- Version 6: retention and erasure. A delivery's body and headers can be removed (after the
-- retention period, or for a customer's erasure request) while its metadata stays: when and why.
-- With WEBHOOK_APP_REDACT_FIELDS, a body's configured fields are redacted once (redacted_at).
-- Indexes for the pruner: deliveries that still carry a body, by age; replays of a delivery.

ALTER TABLE deliveries ADD COLUMN body_removed_at DOUBLE PRECISION;

ALTER TABLE deliveries ADD COLUMN body_removed_why TEXT;

ALTER TABLE deliveries ADD COLUMN redacted_at DOUBLE PRECISION;

CREATE INDEX deliveries_with_body ON deliveries(received_at) WHERE body_removed_at IS NULL;

CREATE INDEX deliveries_replay_of ON deliveries(replay_of) WHERE replay_of IS NOT NULL;
