"""Commerce Layer's webhook topics: what a topic looks like and which ones it sends.

The topics are the ones Commerce Layer's own dashboard lets an operator subscribe to, shipped with
the package as `data/topics.json` (a copy of the reference list, with its source; 187 topics, 22 of
them `orders.*`). Commerce Layer signs only the body, so the topic header is the sender's word: the
intake stores a delivery only under one of these topics (or one `WEBHOOK_APP_TOPICS` adds), so one
captured delivery cannot be stored (and counted) again under invented topics. Non-order topics are
stored as `ignored`; the policy may act on any order topic.
"""

from __future__ import annotations

import json
import re
from importlib import resources

TOPIC_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}\.[a-z][a-z0-9_]{0,63}$")
ORDER_TOPIC_PREFIX = "orders."


def _load() -> tuple[str, tuple[str, ...]]:
    """The shipped list: package data, not configuration (it changes with the package only)."""
    doc = json.loads((resources.files("webhook_app") / "data" / "topics.json").read_text(encoding="utf-8"))
    topics = tuple(doc["topics"])
    bad = [t for t in topics if not TOPIC_PATTERN.match(t)]
    if bad or len(set(topics)) != len(topics):
        raise ValueError(f"webhook_app/data/topics.json: malformed or repeated topic {bad[:1]}")
    return str(doc.get("source", "")), topics


TOPICS_SOURCE, ALL_TOPICS = _load()
# Every topic Commerce Layer sends: what the intake accepts without WEBHOOK_APP_TOPICS.
KNOWN_TOPICS = frozenset(ALL_TOPICS)
# The order topics: what a policy rule may list, and what `webhooks register` subscribes to when
# the policy acts on every order topic.
ORDER_TOPICS = tuple(t for t in ALL_TOPICS if t.startswith(ORDER_TOPIC_PREFIX))
# A customer's anonymization request (FACTS.md): the worker honours `_completed` by erasing the
# customer's stored bodies (ops/anonymization.py) and records all four in the operations log.
ANONYMIZATION_TOPICS = (
    "customers.anonymization_started",
    "customers.anonymization_completed",
    "customers.anonymization_cancelled",
    "customers.anonymization_failed",
)
