-- Version 4: the operations log: what the service or an operator did beyond deliveries (a wallet
-- entry deleted, a circuit reset, a backfill, a prune, a customer's data forgotten).

CREATE TABLE operations (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT,
    detail TEXT NOT NULL
);

CREATE INDEX operations_kind ON operations(kind, id);
