-- Version 8: wallet activity. Each decision about the wallet keeps the order's market (from the
-- delivery's body, when the webhook included `market`), so activity can be counted per day and
-- market after the body itself is pruned; decisions by time for those counts.

ALTER TABLE decisions ADD COLUMN market_id TEXT;

CREATE INDEX decisions_decided ON decisions(decided_at);
