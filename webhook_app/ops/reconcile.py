"""Reconcile: find orders Commerce Layer has that never reached us, and feed them in.

Commerce Layer stops calling after its retries and when a webhook's circuit opens, so events get
lost upstream. This lists the orders updated in a window (API, paginated, rate-limited by the
client), keeps those with no delivery here, reads each with the includes the policy needs and
stores it as a delivery (marked as coming from reconcile) so the normal pipeline decides and acts.

A backfill's identity is the order's, not its body's (`backfill_identity`): two reconciles at once
(two circuit guards, an operator's run beside the worker's) both find the order missing and each
reads it, and the reads differ once the first one's job has acted on the order; the second store
is then a duplicate, so each missed order gets one job. An order with any job here is never
missing, so the identity never stands in the way of a later gap.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from webhook_app.commercelayer import CommerceLayerAPI
from webhook_app.events import Delivery
from webhook_app.policy import Policy
from webhook_app.store import Store
from webhook_app.timefmt import iso

SOURCE_HEADER = "X-Webhook-App-Source"
# The topic an order's status implies (the event that would have announced it).
STATUS_TOPICS = {
    "draft": "orders.draft",
    "pending": "orders.pending",
    "placing": "orders.place",
    "placed": "orders.place",
    "editing": "orders.place",
    "approved": "orders.approve",
    "cancelled": "orders.cancel",
}


def backfill_identity(order_id: str, organization: str = "") -> str:
    """The identity of a reconcile's delivery for this order: one per order (and organization, in
    agency mode), whatever was read."""
    whose = f"{organization}\x01" if organization else ""
    return hashlib.sha256(f"{whose}backfill\x00orders\x00{order_id}".encode()).hexdigest()


@dataclass
class Result:
    listed: int = 0
    missing: list[str] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)


def reconcile(
    client: CommerceLayerAPI,
    store: Store,
    policy: Policy,
    *,
    since: float,
    until: float | None = None,
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
    organization: str = "",
) -> Result:
    """`client` is `organization`'s (agency mode): its orders are queued under it."""
    params = {"filter[q][updated_at_gteq]": iso(since, timespec="seconds"), "sort": "updated_at"}
    if until is not None:
        params["filter[q][updated_at_lteq]"] = iso(until, timespec="seconds")
    result = Result()
    ids: list[tuple[str, str]] = []
    for order in client.list_orders(params=params):
        result.listed += 1
        status = str((order.get("attributes") or {}).get("status") or "")
        ids.append((str(order.get("id")), status))
    known = store.orders_with_jobs([i for i, _ in ids], organization=organization)
    includes = policy.required_includes()
    for order_id, status in ids:
        if order_id in known:
            continue
        result.missing.append(order_id)
        if dry_run:
            continue
        doc = client.get_order(order_id, include=includes)
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        topic = STATUS_TOPICS.get(status, "orders.place")
        delivery = Delivery(
            topic=topic,
            body=body,
            identity=backfill_identity(order_id, organization),
            secret_label="reconcile",
            resource_type="orders",
            resource_id=order_id,
            headers={SOURCE_HEADER: "reconcile", "X-CommerceLayer-Topic": topic},
            organization=organization,
        )
        recorded = store.record_delivery(delivery, now=clock())
        if recorded.job_id is not None and not recorded.duplicate:
            result.queued.append(recorded.delivery_id)
    return result
