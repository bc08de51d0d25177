"""Commerce Layer's resource model, as far as a policy reads it: which attributes each resource has.

A policy `field` such as `order.guest` names an attribute of a resource in the webhook body. A
misspelt one (`order.gest`) is never in any body, so every comparison on it is false and the rule
quietly never matches; `check_field` catches it when the policy loads, against the attributes and
relationships the resources really have (`data/resources.json`, derived from Commerce Layer's API
reference by tests/support/resource_model.py), and names the nearest valid attributes.

`payment_source` is polymorphic (an order's payment source is one of several types): a field is
valid if any payment source type has it; `types_with` says which do.

`field_kinds` gives a field's value type(s), for checking the values a policy compares it with
(`operands.py`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Shape:
    """One resource type: attribute name -> type, the write-only attributes and the relationships."""

    attributes: Mapping[str, str]
    write_only: frozenset[str]
    relationships: frozenset[str]


@dataclass(frozen=True)
class ResourceModel:
    shapes: Mapping[str, Shape]
    payment_source_types: tuple[str, ...]

    def types_with(self, attribute: str) -> frozenset[str]:
        """The payment source types that have `attribute`."""
        return frozenset(t for t in self.payment_source_types if attribute in self.shapes[t].attributes)


@cache
def load_model() -> ResourceModel:
    """The shipped model (package data, read once)."""
    doc = json.loads((resources.files("webhook_app") / "data" / "resources.json").read_text(encoding="utf-8"))
    shapes = {
        name: Shape(
            attributes=dict(r["attributes"]),
            write_only=frozenset(r["write_only"]),
            relationships=frozenset(r["relationships"]),
        )
        for name, r in doc["resources"].items()
    }
    return ResourceModel(shapes=shapes, payment_source_types=tuple(doc["payment_source_types"]))


# What each policy root reads, and how a message names it.
_ROOT_TYPES = {
    "order": ("orders",),
    "customer": ("customers",),
    "market": ("markets",),
    "line_items": ("line_items",),
    "wallet": ("customer_payment_sources",),
}
_ROOT_NAMES = {
    "order": "orders",
    "customer": "customers",
    "market": "markets",
    "line_items": "line items",
    "wallet": "wallet entries (customer_payment_sources)",
    "payment_source": "payment sources",
}
# An order's relationships that a policy reads through a root of its own.
_RELATIONSHIP_ROOTS = {
    "customer": "customer",
    "market": "market",
    "payment_source": "payment_source",
    "line_items": "line_items",
    "available_customer_payment_sources": "wallet",
}
# Attributes that can hold keys of their own (`order.metadata.vip`).
_NESTED_TYPES = frozenset({"object", "json"})
# The value type of the fields a root has besides its attributes.
_SPECIAL_KINDS = {"id": "string", "type": "string", "count": "integer"}
# Where Commerce Layer's OpenAPI schema (components.schemas.order) gives an attribute another type
# than resources.json, a body may carry either: Commerce Layer's own orders.place example sends
# `number` as a number (tests/test_policy_model.py finds these from openapi.json).
OPENAPI_KINDS = {("orders", "number"): "integer"}


def _types(root: str, model: ResourceModel) -> tuple[str, ...]:
    return model.payment_source_types if root == "payment_source" else _ROOT_TYPES[root]


def _one_of(names: Sequence[str]) -> str:
    quoted = [f'"{n}"' for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def suggest(name: str, candidates: Sequence[str]) -> str:
    """`; did you mean "guest"?`, or nothing when no candidate is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    return f"; did you mean {_one_of(close)}?" if close else ""


def check_field(path: Sequence[str], model: ResourceModel | None = None) -> str | None:
    """Why the field at `path` (root first, e.g. ("order", "gest")) is in no webhook body, or None.

    Checked: the attribute after the root; beyond it only that the attribute can have keys (an
    object such as `metadata`): their names are free."""
    root = path[0]
    if root == "topic":
        return None
    model = model or load_model()
    dotted = ".".join(path)
    name, rest = path[1], path[2:]
    shapes = [model.shapes[t] for t in _types(root, model)]
    specials = ("id", "type", "count") if root in ("line_items", "wallet") else ("id", "type")
    if name in specials:
        if rest:
            return f'{dotted}: "{name}" has no keys'
        return None
    kinds = {s.attributes[name] for s in shapes if name in s.attributes}
    if kinds:
        if rest and not kinds & _NESTED_TYPES:
            return f'{dotted}: "{name}" is {_article(sorted(kinds)[0])}, it has no keys such as "{rest[0]}"'
        return None
    what = _ROOT_NAMES[root]
    if any(name in s.write_only for s in shapes):
        return f'{dotted}: "{name}" is write-only on {what}: Commerce Layer never sends it'
    if any(name in s.relationships for s in shapes):
        target = _RELATIONSHIP_ROOTS.get(name) if root == "order" else None
        if target is not None:
            example = ".".join((target, *rest)) if rest else f"{target}.id"
            return (
                f'{dotted}: "{name}" is a relationship of orders, not an attribute; '
                f"the included {name} is read as `{target}.*` (e.g. `{example}`)"
            )
        return (
            f'{dotted}: "{name}" is a relationship of {what}, not an attribute; a policy reads the '
            "attributes of order, customer, payment_source, market, line_items and wallet only"
        )
    candidates = [a for s in shapes for a in s.attributes] + list(specials)
    lacks = "no payment source type has an" if root == "payment_source" else f"{what} have no"
    return f'{dotted}: {lacks} attribute "{name}"{suggest(name, candidates)}'


def field_kinds(path: Sequence[str], model: ResourceModel | None = None) -> frozenset[str] | None:
    """The model's types of the valid field at `path` (several where payment source types, or
    resources.json and the OpenAPI schema, differ), or None where the model gives none: a key
    inside an object attribute (`order.metadata.vip`) or an attribute without a type."""
    root = path[0]
    if root == "topic":
        return frozenset({"string"})
    if len(path) > 2:
        return None
    model = model or load_model()
    name = path[1]
    types = _types(root, model)
    if name in _SPECIAL_KINDS and (name != "count" or root in ("line_items", "wallet")):
        return frozenset({_SPECIAL_KINDS[name]})
    kinds = {model.shapes[t].attributes[name] for t in types if name in model.shapes[t].attributes}
    kinds |= {OPENAPI_KINDS[(t, name)] for t in types if (t, name) in OPENAPI_KINDS}
    return frozenset(kinds) if kinds and "" not in kinds else None


def _article(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"
