"""Commerce Layer's webhook topics: what a topic looks like and which ones it sends.

The topics Commerce Layer sends (https://docs.commercelayer.io/developers/real-time-webhooks):
the documented order topics, and the non-order ones seen in real webhook bodies (stored as
`ignored`). Commerce Layer signs only the body, so the topic header is the sender's word: an
allow-list keeps one captured delivery from being stored (and counted) under any topic.
`WEBHOOK_APP_TOPICS` adds to it (the live list may be longer).
"""

from __future__ import annotations

import re

TOPIC_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}\.[a-z][a-z0-9_]{0,63}$")

# The documented order topics: also what `webhooks register` subscribes to when the policy acts
# on all of them.
ORDER_TOPICS = (
    "orders.create",
    "orders.draft",
    "orders.pending",
    "orders.place",
    "orders.approve",
    "orders.cancel",
    "orders.authorize",
    "orders.void",
    "orders.pay",
    "orders.refund",
    "orders.start_fulfilling",
    "orders.cancel_fulfilling",
    "orders.fulfill",
    "orders.rebuild_shipments",
    "orders.destroy",
)
OTHER_TOPICS = ("customers.create", "in_stock_subscriptions.notify")
# A customer's anonymization request (FACTS.md): the worker honours `_completed` by erasing the
# customer's stored bodies (ops/anonymization.py) and records all four in the operations log.
ANONYMIZATION_TOPICS = (
    "customers.anonymization_started",
    "customers.anonymization_completed",
    "customers.anonymization_cancelled",
    "customers.anonymization_failed",
)
KNOWN_TOPICS = frozenset(ORDER_TOPICS + OTHER_TOPICS + ANONYMIZATION_TOPICS)
