"""Erasure: remove the stored bodies and headers that name one customer (Commerce Layer's
customer anonymization requests), keeping the metadata and decisions, which hold ids only.

A delivery names the customer when its resource is that customer, when the order's `customer`
relationship or an included `customers` resource has the id, or when an `email` or
`customer_email` attribute of the resource or of anything included equals the address (compared
case-insensitively). Only bodies still stored are read: retention bounds how many there are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook_app.store import Store

_EMAIL_FIELDS = ("email", "customer_email")


@dataclass(frozen=True)
class Forgotten:
    scanned: int
    removed: int


def names_customer(doc: Any, *, customer_id: str | None, email: str | None) -> bool:
    if not isinstance(doc, Mapping):
        return False
    resources = [doc.get("data"), *(doc.get("included") or [])]
    wanted = email.strip().lower() if email else None
    for r in resources:
        if not isinstance(r, Mapping):
            continue
        if customer_id and r.get("type") == "customers" and r.get("id") == customer_id:
            return True
        rel = (r.get("relationships") or {}).get("customer") if isinstance(r.get("relationships"), Mapping) else None
        link = rel.get("data") if isinstance(rel, Mapping) else None
        if customer_id and isinstance(link, Mapping) and link.get("id") == customer_id:
            return True
        attrs = r.get("attributes")
        if wanted and isinstance(attrs, Mapping):
            for f in _EMAIL_FIELDS:
                v = attrs.get(f)
                if isinstance(v, str) and v.strip().lower() == wanted:
                    return True
    return False


def forget_customer(
    store: Store, *, customer_id: str | None = None, email: str | None = None, now: float, page: int = 200
) -> Forgotten:
    """Remove the bodies and headers of every stored delivery naming the customer; counts."""
    if not customer_id and not email:
        raise ValueError("a customer id or an email is needed")
    scanned = removed = 0
    after = 0
    while True:
        rows = store.bodies_after(after, limit=page)
        if not rows:
            break
        scanned += len(rows)
        after = rows[-1][0]
        hits = [i for i, body in rows if names_customer(_doc(body), customer_id=customer_id, email=email)]
        if hits:
            removed += store.remove_bodies(hits, why="forgotten", now=now)
    return Forgotten(scanned, removed)


def _doc(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def record(store: Store, result: Forgotten, *, by_id: bool, by_email: bool, now: float) -> None:
    """The operations log entry: how many, and by what, never the email itself."""
    store.record_operation(
        "forget",
        subject=None,
        detail={"removed": result.removed, "scanned": result.scanned, "by": _by(by_id, by_email)},
        now=now,
    )


def _by(*flags: bool) -> str:
    names: Iterable[str] = (n for n, f in zip(("customer id", "email"), flags, strict=True) if f)
    return " and ".join(names)
