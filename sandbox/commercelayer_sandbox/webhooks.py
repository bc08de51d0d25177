"""The `webhooks` resource: creating, updating (circuit reset) and checking registrations.

Shared by the API (`POST/PATCH /api/webhooks`) and scenario loading. The sandbox fires order
events and customers' anonymization events only, so a topic outside `orders.ORDER_TOPICS` and
`anonymization.TOPICS`, or an include path the sandbox does not model for the topic's resource
(`render.parse_include`), is refused with 422 rather than accepted and never delivered.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from commercelayer_sandbox.anonymization import TOPICS as CUSTOMER_TOPICS
from commercelayer_sandbox.errors import ApiError, invalid
from commercelayer_sandbox.model import Webhook
from commercelayer_sandbox.orders import ORDER_TOPICS
from commercelayer_sandbox.render import parse_include
from commercelayer_sandbox.state import SandboxState


def new_shared_secret() -> str:
    """Commerce Layer generates the secret; it is shown in the webhook's attributes."""
    return secrets.token_hex(16)


def check_attributes(attrs: Mapping[str, Any], topic: str | None = None) -> None:
    """Sandbox-level rules on top of the official schema; 422 listing every problem. `topic`: the
    webhook's current one (an update that leaves it unchanged)."""
    problems = []
    fired = ORDER_TOPICS + CUSTOMER_TOPICS
    if "topic" in attrs and attrs["topic"] not in fired:
        problems.append(
            invalid(
                f"{attrs['topic']!r} is not a topic the sandbox fires (it fires {', '.join(fired)})",
                pointer="/data/attributes/topic",
                error="inclusion",
                title="topic is not included in the list",
            )
        )
    if "callback_url" in attrs:
        parts = urlsplit(str(attrs["callback_url"]))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(
                invalid(
                    "callback_url must be an http(s) URL",
                    pointer="/data/attributes/callback_url",
                    error="invalid_url",
                )
            )
    rtype = "customers" if str(attrs.get("topic", topic) or "") in CUSTOMER_TOPICS else "orders"
    for n, name in enumerate(attrs.get("include_resources") or []):
        try:
            parse_include([str(name)], rtype)
        except ApiError:
            problems.append(
                invalid(
                    f"{name!r} cannot be included (not a relationship path of {rtype} that the sandbox models)",
                    pointer=f"/data/attributes/include_resources/{n}",
                    error="invalid_include",
                )
            )
    if problems:
        raise ApiError.many(422, problems)


def create(
    state: SandboxState,
    attrs: Mapping[str, Any],
    *,
    now: int,
    ident: str | None = None,
    shared_secret: str | None = None,
) -> Webhook:
    check_attributes(attrs)
    with state.lock:
        if ident is None:
            ident = state.ids.new()
        else:
            state.ids.reserve(ident)
        hook = Webhook(
            id=ident,
            name=attrs.get("name") or f"{attrs['topic']} webhook",
            topic=attrs["topic"],
            callback_url=attrs["callback_url"],
            include_resources=list(attrs.get("include_resources") or []),
            shared_secret=shared_secret or new_shared_secret(),
            created_at=now,
            updated_at=now,
            reference=attrs.get("reference"),
            metadata=dict(attrs.get("metadata") or {}),
        )
        state.webhooks[hook.id] = hook
        return hook


def update(state: SandboxState, hook: Webhook, attrs: Mapping[str, Any], *, now: int) -> Webhook:
    """Apply a checked `webhookUpdate` body; `_reset_circuit: true` closes the circuit."""
    check_attributes(attrs, hook.topic)
    with state.lock:
        for key in ("name", "topic", "callback_url", "reference"):
            if key in attrs:
                setattr(hook, key, attrs[key])
        if "include_resources" in attrs:
            hook.include_resources = list(attrs["include_resources"])
        if "metadata" in attrs:
            hook.metadata = dict(attrs["metadata"])
        if attrs.get("_reset_circuit"):
            hook.circuit_state = "closed"
            hook.circuit_failure_count = 0
        hook.updated_at = now
        return hook
