-- Version 9: what keeps scaled-out workers from doing one thing twice beyond one order.
-- card_claims: one save at a time per customer and card (the card as the policy's `wallet_match`
-- identifies it, hashed; '' when the card cannot be identified: the whole customer). Held by the
-- order whose save is in hand or whose last save's outcome is unknown, under a lease; left
-- behind `open` afterwards, so a later save of that card reads the wallet before it writes.
-- `organization` is '' until one service serves several organizations.
-- leases: named leases for work one process of the deployment must do alone (a circuit reset
-- and its backfill, per webhook).

CREATE TABLE card_claims (
    organization TEXT NOT NULL DEFAULT '',
    customer_id TEXT NOT NULL,
    card_key TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'held')),
    order_id TEXT NOT NULL,
    owner TEXT,
    job_id INTEGER,
    lease_expires_at REAL,
    wallet_entry_id TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (organization, customer_id, card_key)
    );

CREATE INDEX card_claims_order ON card_claims(order_id);

CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
    );
