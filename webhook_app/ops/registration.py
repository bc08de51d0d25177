"""Webhook registration and circuit status at Commerce Layer.

`register` creates one webhook per topic the policy acts on, with the `include_resources` the
policy's fields and the guards need, skipping topics already registered for the same callback URL;
with `anonymization` (WEBHOOK_APP_HONOUR_ANONYMIZATION) also one per `customers.anonymization_*`
topic, without includes (the body is the customer, which is all the erasure needs).
`status` lists every webhook with its circuit state; `reset` closes an open circuit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webhook_app.commercelayer import CommerceLayerAPI
from webhook_app.policy import Policy
from webhook_app.topics import ANONYMIZATION_TOPICS, ORDER_TOPICS


@dataclass(frozen=True)
class Planned:
    topic: str
    include_resources: list[str]
    existing_id: str | None = None
    created_id: str | None = None
    shared_secret: str | None = None


def plan(policy: Policy, *, anonymization: bool = False) -> list[tuple[str, list[str]]]:
    topics = policy.topics()
    chosen = sorted(topics) if topics is not None else list(ORDER_TOPICS)
    planned = [(t, policy.required_includes()) for t in chosen]
    if anonymization:
        planned += [(t, []) for t in ANONYMIZATION_TOPICS]
    return planned


def register(
    client: CommerceLayerAPI,
    policy: Policy,
    *,
    callback_url: str,
    dry_run: bool = False,
    name_prefix: str = "webhook-app",
    anonymization: bool = False,
) -> list[Planned]:
    existing = {(_attr(w, "topic"), _attr(w, "callback_url")): w for w in client.list_webhooks()}
    out = []
    for topic, includes in plan(policy, anonymization=anonymization):
        found = existing.get((topic, callback_url))
        if found is not None:
            out.append(Planned(topic, includes, existing_id=str(found.get("id"))))
            continue
        if dry_run:
            out.append(Planned(topic, includes))
            continue
        created = client.create_webhook(
            topic=topic, callback_url=callback_url, include_resources=includes, name=f"{name_prefix} {topic}"
        )
        out.append(
            Planned(topic, includes, created_id=str(created.get("id")), shared_secret=_attr(created, "shared_secret"))
        )
    return out


def status(client: CommerceLayerAPI) -> list[dict[str, Any]]:
    rows = []
    for w in client.list_webhooks():
        rows.append(
            {
                "id": w.get("id"),
                "topic": _attr(w, "topic"),
                "callback_url": _attr(w, "callback_url"),
                "circuit_state": _attr(w, "circuit_state"),
                "circuit_failure_count": _attr(w, "circuit_failure_count"),
            }
        )
    return rows


def _attr(resource: dict[str, Any], name: str) -> Any:
    return (resource.get("attributes") or {}).get(name)
