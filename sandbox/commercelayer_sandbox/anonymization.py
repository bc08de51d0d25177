"""Customers' data anonymization, as Commerce Layer documents it (core API reference, *Customers*).

`_request_anonymization` on a customer submits a request (`anonymization_status` `requested`,
`anonymization_info` with `requested_at` and the requester); Commerce Layer processes it within
24-36 hours and announces each step with a `customers.anonymization_*` webhook. In the sandbox the
control API plays the processing (`POST /_sandbox/events` with `customer_id` and
`transition: true`): `started`, then `completed` or `failed`; `_cancel_anonymization` (or the
`cancelled` event) revokes a request not yet completed.

Where the documentation is silent, the sandbox assumes (docs/sandbox.md, *What it assumes where
Commerce Layer is undocumented (all configurable)*): the statuses are named after the topics
(`started`, `completed`, `cancelled`, `failed`); on completion the customer's `email`, and the
`customer_email` of their orders, become one shared placeholder (`ANONYMIZED_EMAIL`), so a
receiver cannot learn the address from the completed event, nor tell two anonymized customers
apart by it.
"""

from __future__ import annotations

from typing import Any

from commercelayer_sandbox.errors import SandboxError
from commercelayer_sandbox.model import Customer
from commercelayer_sandbox.state import SandboxState
from commercelayer_sandbox.timeutil import iso

TOPICS = (
    "customers.anonymization_started",
    "customers.anonymization_completed",
    "customers.anonymization_cancelled",
    "customers.anonymization_failed",
)
ANONYMIZED_EMAIL = "anonymized@anonymized.invalid"
#: The status each step needs before it (None: no request yet).
_FROM = {
    "started": ("requested",),
    "completed": ("started",),
    "cancelled": ("requested", "started"),
    "failed": ("started",),
}
#: The user of the organization who asks (the docs' example shape); not the customer.
REQUESTER = {"id": "sandboxUsr", "first_name": "Sandbox", "last_name": "Operator", "email": "operator@sandbox.test"}


def request(customer: Customer, now: int) -> None:
    """`_request_anonymization: true` (the caller holds the lock)."""
    if customer.anonymization_status in ("requested", "started"):
        raise SandboxError("_request_anonymization", f"customer {customer.id} already has an anonymization request")
    customer.anonymization_status = "requested"
    customer.anonymization_info = {"status": "requested", "requested_at": _utc(now), "requester": dict(REQUESTER)}
    customer.updated_at = now


def transition(state: SandboxState, customer: Customer, topic: str, now: int) -> None:
    """Move the request as `topic` announces it (the caller holds the lock); SandboxError if the
    request is not in a status that step follows. `started` without a request submits one first
    (the 24-36 h of processing, played at once)."""
    step = topic.rsplit("_", 1)[1]
    if step == "started" and customer.anonymization_status in (None, "completed", "cancelled", "failed"):
        request(customer, now)
    if customer.anonymization_status not in _FROM[step]:
        raise SandboxError(
            "topic",
            f"customer {customer.id}'s anonymization is {customer.anonymization_status or 'not requested'}:"
            f" {step} follows {' or '.join(_FROM[step])}",
        )
    info = dict(customer.anonymization_info or {})
    info["status"] = step
    info[f"{step}_at"] = _utc(now)
    if step == "cancelled":
        info["cancellation_requester"] = dict(REQUESTER)
    customer.anonymization_status = step
    customer.anonymization_info = info
    customer.updated_at = now
    if step == "completed":
        customer.email = ANONYMIZED_EMAIL
        for order in state.orders.values():
            if order.customer_id == customer.id:
                order.customer_email = ANONYMIZED_EMAIL
                order.updated_at = now


def _utc(ms: int) -> Any:
    """`anonymization_info`'s timestamps, in the docs' example format (`2025-03-15 11:39:21 UTC`)."""
    return iso(ms)[:19].replace("T", " ") + " UTC"
