"""What `PATCH /api/events/{id}` does: `_trigger` sends the event to its webhooks again.

The official schema this sandbox checks bodies against (openapi.json, schema 3.6.0) lists the
`events` resource read-only; the newer resource model (resources.json, 7.9.16) gives it the
`update` action with the trigger `_trigger` ("Send this attribute if you want to force webhooks
execution for this event. Cannot be passed by sales channels") and the updatable `reference`,
`reference_origin` and `metadata`. The body is checked here against that model, as strictly as
`bodies.py` checks the others: unknown attributes are refused.

Not documented, and assumed here: the event is sent to the webhooks subscribed to its topic now,
with a body rendered from the order as it is now (so an unchanged order gives the same bytes as
before, a changed order new ones); an event whose order was destroyed sends the destroy body.
"""

from __future__ import annotations

from typing import Any

from commercelayer_sandbox.errors import ApiError, invalid

UPDATABLE: dict[str, type | tuple[type, ...]] = {
    "_trigger": bool,
    "reference": (str, type(None)),
    "reference_origin": (str, type(None)),
    "metadata": dict,
}


def check_update(doc: Any, *, url_id: str) -> dict[str, Any]:
    """The attributes of an `events` update body, or a 422 naming every problem."""
    problems = []
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        problems.append(invalid("the body needs a data object", pointer="/data", error="schema"))
        raise ApiError.many(422, problems)
    if data.get("type") != "events":
        problems.append(invalid("data.type must be events", pointer="/data/type", error="schema"))
    if not isinstance(data.get("id"), str) or data["id"] != url_id:
        problems.append(
            invalid(f"data.id does not match the id in the URL {url_id!r}", pointer="/data/id", error="id_mismatch")
        )
    attributes = data.get("attributes")
    if not isinstance(attributes, dict):
        problems.append(invalid("data.attributes must be an object", pointer="/data/attributes", error="schema"))
        raise ApiError.many(422, problems)
    for name, value in sorted(attributes.items()):
        kind = UPDATABLE.get(name)
        if kind is None:
            problems.append(
                invalid(
                    f"{name} is not an attribute of eventUpdate",
                    pointer=f"/data/attributes/{name}",
                    error="unknown_attribute",
                    title="unknown attribute",
                )
            )
        elif not isinstance(value, kind):
            problems.append(invalid(f"{name} has the wrong type", pointer=f"/data/attributes/{name}", error="schema"))
    if problems:
        raise ApiError.many(422, problems)
    return attributes


def sales_channel_refused() -> ApiError:
    return ApiError(
        401,
        "UNAUTHORIZED",
        "Unauthorized",
        "You are not authorized to perform this action: _trigger cannot be passed by sales channels.",
    )
