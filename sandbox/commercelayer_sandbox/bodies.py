"""Request bodies of the emulated API: checked against the official fragments, strictly.

`check_document(fragment, doc, url_id=...)` returns the `data.attributes` of a create/update body
or raises a 422 `ApiError` carrying one error object per problem, each with a JSON pointer:

- everything the official schema fragment (e.g. `orderUpdate`) rejects (wrong types...);
- every attribute the fragment does not declare (the official schema does not set
  `additionalProperties: false`, but the sandbox refuses unknown attributes so that a typo in a
  trigger such as `_save_payment_source_to_customer_walet` is loud instead of a silent no-op);
- a `data.id` that differs from the id in the URL.
"""

from __future__ import annotations

from typing import Any

from commercelayer_sandbox import schema
from commercelayer_sandbox.errors import ApiError, invalid


def check_document(fragment: str, doc: Any, *, url_id: str | None = None) -> dict[str, Any]:
    problems = [
        invalid(message, pointer=ptr, error="schema", title="does not match the schema")
        for ptr, message in schema.errors(fragment, doc)
    ]
    data = doc.get("data") if isinstance(doc, dict) else None
    attributes = data.get("attributes") if isinstance(data, dict) else None
    if isinstance(attributes, dict):
        known = schema.attribute_names(fragment)
        problems.extend(
            invalid(
                f"{name} is not an attribute of {fragment}",
                pointer=f"/data/attributes/{name}",
                error="unknown_attribute",
                title="unknown attribute",
            )
            for name in sorted(set(attributes) - known)
        )
    if url_id is not None and isinstance(data, dict) and isinstance(data.get("id"), str) and data["id"] != url_id:
        problems.append(
            invalid(
                f"data.id {data['id']!r} does not match the id in the URL {url_id!r}",
                pointer="/data/id",
                error="id_mismatch",
                title="id mismatch",
            )
        )
    if problems:
        raise ApiError.many(422, problems)
    assert isinstance(attributes, dict)  # the fragments require data.attributes to be an object
    return attributes


def relationships_of(doc: dict[str, Any]) -> dict[str, Any]:
    rels = doc["data"].get("relationships")
    return rels if isinstance(rels, dict) else {}
