"""Anonymization honoured: Commerce Layer's `customers.anonymization_*` events, worked by the worker.

Commerce Layer announces a customer's anonymization request as it goes (`_started`, then
`_completed`, `_cancelled` or `_failed`). The intake stores these deliveries with a job (like an
order event's); the worker hands the job to `Anonymizer.handle`, never to the policy, in enforce
and shadow mode alike (erasure is a duty, not a wallet action):

- `_completed`: every stored body and header naming the customer is erased as `webhook-app forget`
  erases them (`privacy.forget_customer`: by customer id, and by each e-mail address the customer
  had), this delivery's own included; one `anonymization` entry in the operations log (subject: the
  customer id; detail: how many, never an address).
- `_started`, `_cancelled`, `_failed`: an operations log entry only.

Which e-mail addresses: the completed event's body shows the customer already anonymized, so its
`email` is not the customer's (and may be shared by every anonymized customer). The addresses come
from the bodies still stored that name the customer by id and do not show them anonymized
(`anonymization_status` not `completed`): the `_started` delivery, `customers.*` events, orders
linked to the customer (their `customer_email`). They are read before anything is erased. Orders
placed with the same address but linked to no customer are found through those addresses only.

Exactly once: a redelivery of the same bytes is a duplicate at the intake (no job). Another
`_completed` delivery for the same customer erases whatever names the customer by then (its own
body at least) but adds no operations log entry when nothing else was left, and an attempt retried
after it had recorded its entry (a lost lease) does not record it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from webhook_app.errors import InvalidPayload
from webhook_app.ops import privacy
from webhook_app.policy import SKIP, Decision
from webhook_app.states import DecisionOutcome
from webhook_app.store import Job, Operation, Store
from webhook_app.topics import ANONYMIZATION_TOPICS
from webhook_app.worker import Handled, TopicHandler

KIND = "anonymization"  # the operations log's kind
RULE = "anonymization"  # the decision's rule (no policy rule decides these jobs)
ERASE = "erase"
RECORD = "record"
EVENTS = {topic: topic.rsplit("_", 1)[1] for topic in ANONYMIZATION_TOPICS}  # started, completed, ...
_PAGE = 200


@dataclass(frozen=True)
class Anonymizer:
    store: Store
    enabled: bool = True  # WEBHOOK_APP_HONOUR_ANONYMIZATION

    def handlers(self) -> dict[str, TopicHandler]:
        """The worker's handlers: one per anonymization topic."""
        return {topic: self.handle for topic in ANONYMIZATION_TOPICS}

    def handle(self, job: Job, now: float) -> Handled:
        event = EVENTS[job.topic]
        customer_id = customer_of(job.body)
        if not self.enabled:
            reason = (
                f"anonymization {event} of customer {customer_id} not honoured: WEBHOOK_APP_HONOUR_ANONYMIZATION"
                f" is off (`webhook-app forget --customer {customer_id}` erases by hand)"
            )
            return _handled(SKIP, reason, DecisionOutcome.DISABLED, event)
        earlier = self.store.list_operations(kind=KIND, subject=customer_id, limit=1000)
        mine = next((op for op in earlier if op.detail.get("delivery_id") == job.delivery_id), None)
        if mine is not None:  # an earlier attempt recorded it, then could not finish the job
            action = ERASE if event == "completed" else RECORD
            return _handled(
                action, f"anonymization {event} already recorded (operation {mine.id})", DecisionOutcome.RECORDED, event
            )
        if event != "completed":
            op = self.store.record_operation(
                KIND,
                subject=customer_id,
                detail={"event": event, "delivery_id": job.delivery_id},
                now=now,
                organization=job.organization,
            )
            return _handled(
                RECORD,
                f"anonymization {event} of customer {customer_id} (operation {op})",
                DecisionOutcome.RECORDED,
                event,
            )
        return self._erase(job, customer_id, earlier, now)

    def _erase(self, job: Job, customer_id: str, earlier: list[Operation], now: float) -> Handled:
        # Agency mode: the organization whose customer asked, only (the same address may be another
        # brand's customer, who asked nothing). Before erasing: the addresses are read from the bodies.
        org = job.organization
        emails = customer_emails(self.store, customer_id, organization=org)
        own = self.store.remove_bodies([job.delivery_id], why="forgotten", now=now)
        removed = scanned = 0
        for n, email in enumerate(emails or [None]):
            result = privacy.forget_customer(
                self.store, customer_id=None if n else customer_id, email=email, now=now, organization=org
            )
            removed += result.removed
            scanned = max(scanned, result.scanned)
        by = "customer id and email" if emails else "customer id"
        done = next((op for op in earlier if op.detail.get("event") == "completed"), None)
        if done is not None and removed == 0:
            reason = f"customer {customer_id} was erased already (operation {done.id}); nothing else named them"
            return _handled(ERASE, reason, DecisionOutcome.ALREADY_ERASED, "completed", own)
        detail = {
            "event": "completed",
            "delivery_id": job.delivery_id,
            "removed": removed + own,
            "scanned": scanned,
            "by": by,
            "emails": len(emails),
        }
        op = self.store.record_operation(KIND, subject=customer_id, detail=detail, now=now, organization=org)
        reason = (
            f"customer {customer_id} anonymized: erased {removed} stored bodies naming them (by {by}) and this"
            f" delivery's own (operation {op})"
        )
        return _handled(ERASE, reason, DecisionOutcome.ERASED, "completed", removed + own)


def _handled(action: str, reason: str, outcome: DecisionOutcome, event: str, erased: int = 0) -> Handled:
    return Handled(
        Decision(action=action, rule=RULE, reason=reason),
        outcome,
        {"anonymization": event, "outcome": outcome, "erased": erased},
    )


def customer_of(body: bytes) -> str:
    """The customer an anonymization delivery is about: its `data.id` (the intake checked the
    resource is `customers`)."""
    doc = _doc(body)
    data = doc.get("data") if isinstance(doc, Mapping) else None
    cid = data.get("id") if isinstance(data, Mapping) else None
    if not isinstance(cid, str) or not cid:
        raise InvalidPayload("the anonymization delivery has no `data.id`")
    return cid


def customer_emails(store: Store, customer_id: str, *, organization: str | None = None) -> list[str]:
    """The e-mail addresses (lower case) the stored bodies give the customer: the customer
    resource's `email`, and the `customer_email` of resources linked to the customer, from every
    stored body that names the customer by id and does not show them anonymized already."""
    found: dict[str, None] = {}
    for doc in _stored_docs(store, organization):
        if not privacy.names_customer(doc, customer_id=customer_id, email=None):
            continue
        resources = [r for r in (doc.get("data"), *(doc.get("included") or [])) if isinstance(r, Mapping)]
        if any(_is_customer(r, customer_id) and _anonymized(r) for r in resources):
            continue
        for r in resources:
            attrs = r.get("attributes")
            if not isinstance(attrs, Mapping):
                continue
            if _is_customer(r, customer_id):
                value = attrs.get("email")
            elif _links_customer(r, customer_id):
                value = attrs.get("customer_email")
            else:
                continue
            if isinstance(value, str) and value.strip():
                found[value.strip().lower()] = None
    return list(found)


def _stored_docs(store: Store, organization: str | None = None) -> Iterator[Any]:
    after = 0
    while rows := store.bodies_after(after, limit=_PAGE, organization=organization):
        after = rows[-1][0]
        for _, body in rows:
            yield _doc(body)


def _is_customer(r: Mapping[str, Any], customer_id: str) -> bool:
    return r.get("type") == "customers" and r.get("id") == customer_id


def _links_customer(r: Mapping[str, Any], customer_id: str) -> bool:
    rels = r.get("relationships")
    rel = rels.get("customer") if isinstance(rels, Mapping) else None
    link = rel.get("data") if isinstance(rel, Mapping) else None
    return isinstance(link, Mapping) and link.get("id") == customer_id


def _anonymized(r: Mapping[str, Any]) -> bool:
    attrs = r.get("attributes")
    return isinstance(attrs, Mapping) and attrs.get("anonymization_status") == "completed"


def _doc(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
