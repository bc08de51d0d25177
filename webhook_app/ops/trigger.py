"""Fire an event again, through Commerce Layer: the whole path, Commerce Layer's signature included.

Commerce Layer keeps each resource's events (`GET /api/orders/{id}/events`, each named by its
topic in `attributes.name`) and sends one to its webhooks again on `PATCH /api/events/{id}` with
`_trigger: true` ("force webhooks execution for this event", resources.json; integration
credentials only). `webhook-app trigger` finds the order's event for a topic (the newest, if the
order has several) and triggers it. What arrives is signed by Commerce Layer like any delivery:
the same body is stored once (a duplicate), a changed order is a new delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webhook_app.commercelayer import CommerceLayerAPI
from webhook_app.errors import NotFound


class EventNotFound(NotFound):
    """The order has no event with that name at Commerce Layer."""


@dataclass(frozen=True)
class Triggered:
    event_id: str
    name: str
    order_id: str | None


def _name(event: dict[str, Any]) -> str:
    return str((event.get("attributes") or {}).get("name") or "")


def find_order_event(client: CommerceLayerAPI, order_id: str, topic: str) -> dict[str, Any]:
    """The order's newest event named `topic` (EventNotFound, naming the ones it has, if none)."""
    events = client.list_order_events(order_id)
    named = [e for e in events if _name(e) == topic]
    if not named:
        have = sorted({_name(e) for e in events if _name(e)})
        listed = ", ".join(have) if have else "none"
        raise EventNotFound(f"order {order_id} has no {topic} event at Commerce Layer (its events: {listed})")
    return max(named, key=lambda e: (str((e.get("attributes") or {}).get("created_at") or ""), str(e.get("id"))))


def trigger(
    client: CommerceLayerAPI, *, order_id: str | None = None, topic: str | None = None, event_id: str | None = None
) -> Triggered:
    """Trigger `event_id`, or the order's event for `topic`; CommerceLayerError as the client raises."""
    if event_id is None:
        if order_id is None or topic is None:
            raise ValueError("an event id, or an order id and a topic")
        event = find_order_event(client, order_id, topic)
        event_id = str(event["id"])
    answer = client.trigger_event(event_id)
    return Triggered(event_id, _name(answer) or (topic or ""), order_id)
