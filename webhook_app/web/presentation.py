"""How stored records are shown: the admin API's JSON, the page's filters, query parsing.

Pure functions of stored data (and of the configured secrets, scrubbed from every shown text);
the API (`admin_api`) and the page (`admin_page`) both use them.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from werkzeug.datastructures import MultiDict

from webhook_app.errors import WebhookAppError
from webhook_app.logs import SecretScrubber
from webhook_app.organizations import SLUG
from webhook_app.states import DeliveryStatus, JobState
from webhook_app.store import DeliveryFilter, Operation, Store, StoredDelivery
from webhook_app.timefmt import iso, parse_time
from webhook_app.tokens import REPLAY_HEADER
from webhook_app.topics import TOPIC_PATTERN

STATUSES = (*DeliveryStatus, *JobState)
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
MAX_ID = 2**63 - 1
# Headers never shown, even though intake does not store most of them.
_HIDDEN_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-admin-token",
        "x-api-key",
        "x-auth-token",
        REPLAY_HEADER.lower(),
    }
)
LIST_PARAMS = ("topic", "order_id", "status", "since", "until", "decision", "limit", "before_id", "organization")


class InvalidQuery(WebhookAppError):
    status = 400
    title = "Invalid query"


def delivery_filter(args: MultiDict[str, str]) -> DeliveryFilter:
    """A DeliveryFilter from query parameters; InvalidQuery (400) for anything unexpected."""
    unknown = sorted(set(args.keys()) - set(LIST_PARAMS))
    if unknown:
        raise InvalidQuery(f"unknown query parameter {unknown[0][:40]!r}; allowed: {', '.join(LIST_PARAMS)}")
    values: dict[str, str] = {}
    for name in LIST_PARAMS:
        given = args.getlist(name)
        if len(given) > 1:
            raise InvalidQuery(f"{name} may be given once")
        if given and given[0].strip():
            values[name] = given[0].strip()
    topic = values.get("topic")
    if topic is not None and not TOPIC_PATTERN.match(topic):
        raise InvalidQuery("topic must look like orders.place")
    order_id = values.get("order_id")
    if order_id is not None and len(order_id) > 128:
        raise InvalidQuery("order_id is longer than 128 characters")
    if order_id is not None and not order_id.isprintable():  # NUL, controls, half surrogate pairs
        raise InvalidQuery("order_id must be printable characters")
    status = values.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidQuery(f"status must be one of {', '.join(STATUSES)}")
    decision = values.get("decision")
    if decision is not None and (len(decision) > 64 or not re.fullmatch(r"[\w.:-]+", decision)):
        raise InvalidQuery("decision must be a rule, an action or an outcome name")
    organization = values.get("organization")
    if organization is not None:
        # Any stored organization, configured or not (one removed from the file stays readable);
        # `default` is the implicit organization's rows ("").
        organization = "" if organization == "default" else organization
        if organization and not SLUG.match(organization):
            raise InvalidQuery("organization must be an organization slug, or default")
    limit = _int_param("limit", values.get("limit"), default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    before_id = _int_param("before_id", values.get("before_id"), default=None, low=1, high=MAX_ID)
    since = _time_param("since", values.get("since"))
    until = _time_param("until", values.get("until"))
    return DeliveryFilter(
        topic=topic,
        order_id=order_id,
        status=status,
        since=since,
        until=until,
        decision=decision,
        limit=limit,
        before_id=before_id,
        organization=organization,
    )


def _int_param(name: str, raw: str | None, *, default: int | None, low: int, high: int) -> Any:
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,19}", raw) or not low <= int(raw) <= high:
        raise InvalidQuery(f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def _time_param(name: str, raw: str | None) -> float | None:
    if raw is None:
        return None
    if re.fullmatch(r"\d{1,12}(\.\d{1,9})?", raw):
        return float(raw)
    try:
        return parse_time(raw)
    except ValueError:
        raise InvalidQuery(f"{name} must be ISO 8601 (like 2026-01-31T12:00:00Z) or seconds since the epoch") from None


class Presenter:
    """Stored records as the admin API shows them, every text scrubbed of the configured secrets."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.scrubber = SecretScrubber(secrets)

    def scrub(self, text: Any) -> Any:
        return self.scrubber.scrub(text) if isinstance(text, str) else text

    def job(self, job: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if job is None:
            return None
        return {
            "id": job["id"],
            "state": job["state"],
            "attempts": job["attempts"],  # since it was queued or last requeued (each attempt: `attempts`)
            # Why it is not done yet; once done, an earlier attempt's error is that attempt's only.
            "last_error": None if job["state"] == JobState.DONE else self.scrub(job.get("last_error")),
            "next_attempt_at": iso(job.get("next_attempt_at")),
            "lease_owner": job.get("lease_owner"),
            "lease_expires_at": iso(job.get("lease_expires_at")),
            "finished_at": iso(job.get("finished_at")),
        }

    def decision(self, d: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "rule": d.get("rule"),
            "action": d.get("action"),
            "outcome": d.get("outcome"),
            "mode": d.get("mode"),
            "guard": d.get("guard"),
            "reason": self.scrub(d.get("reason")),
            "wallet_entry_id": d.get("wallet_entry_id"),
            "decided_at": iso(d.get("decided_at")),
        }

    def attempt(self, a: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "number": a.get("number"),
            "worker": a.get("worker"),
            "started_at": iso(a.get("started_at")),
            "finished_at": iso(a.get("finished_at")),
            "outcome": a.get("outcome"),
            "error": self.scrub(a.get("error")),
            "trace_id": a.get("trace_id"),
            # Commerce Layer's `meta.trace_id` of each answer in this attempt (for its support)
            "commercelayer_trace_ids": [t for t in (a.get("cl_trace_ids") or "").split(",") if t],
        }

    def summary(self, d: StoredDelivery) -> dict[str, Any]:
        return {
            "id": d.id,
            "topic": d.topic,
            "order_id": d.order_id,
            "resource_type": d.resource_type,
            "resource_id": d.resource_id,
            "received_at": iso(d.received_at),
            "status": d.status,  # as received: queued (an order event) or ignored
            "state": d.job["state"] if d.job else d.status,  # now: pending, running, done, dead or ignored
            "replay_of": d.replay_of,
            "job": self.job(d.job),
            "decision": self.decision(d.decisions[-1]) if d.decisions else None,
            "organization": d.organization or "default",
        }

    def detail(self, d: StoredDelivery) -> dict[str, Any]:
        return {
            **self.summary(d),
            "identity": d.identity,
            "signed_with": d.secret_label,
            "organization": d.organization or "default",
            "headers": safe_headers(d.headers),
            "body": d.body.decode("utf-8", "replace"),
            "body_removed": d.body_removed,  # retention | forgotten: the body and headers are gone
            "decisions": [self.decision(x) for x in d.decisions],
            "attempts": [self.attempt(a) for a in d.attempts],
        }


def operation(op: Operation) -> dict[str, Any]:
    return {"id": op.id, "at": iso(op.at), "kind": op.kind, "subject": op.subject, "detail": op.detail}


def safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _HIDDEN_HEADERS}


def stats_document(store: Store, *, now: float) -> dict[str, Any]:
    q = store.queue_stats(now=now)
    counts = store.decision_counts()
    by: dict[str, dict[str, int]] = {"rule": defaultdict(int), "action": defaultdict(int), "outcome": defaultdict(int)}
    for rule, action, outcome, n in counts:
        by["rule"][rule] += n
        by["action"][action] += n
        by["outcome"][outcome] += n
    return {
        "queue": {
            "pending": q.pending,
            "running": q.running,
            "done": q.done,
            "dead": q.dead,
            "oldest_pending_age_seconds": round(q.oldest_pending_age, 3),
        },
        "decisions": [{"rule": r, "action": a, "outcome": o, "count": n} for r, a, o, n in counts],
        "decisions_by_rule": dict(by["rule"]),
        "decisions_by_action": dict(by["action"]),
        "decisions_by_outcome": dict(by["outcome"]),
    }


def pretty_json(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def when(t: float | str | None) -> str:
    """For the page: `2026-01-31 12:00:00Z` from seconds or from ISO 8601 as `iso` writes it."""
    s = t if isinstance(t, str) or t is None else iso(t)
    return "" if not s else s[:19].replace("T", " ") + "Z"


def age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
