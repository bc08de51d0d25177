"""Erasure: remove the stored bodies and headers that name one customer (Commerce Layer's
customer anonymization requests), keeping the metadata and decisions, which hold ids only.

A delivery names the customer when its resource is that customer, when the order's `customer`
relationship or an included `customers` resource has the id, or when any string in the raw body
holds the address (compared case-insensitively, however it is escaped, not inside a longer
address). The raw bytes, not the parsed document: a parser keeps the last of two equal keys, so a
body with `customer_email` twice would hide the first address from a parsed comparison while its
stored bytes still hold it. Only bodies still stored are read: retention bounds how many there are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook_app.store import Store

_EMAIL_FIELDS = ("email", "customer_email")


@dataclass(frozen=True)
class Forgotten:
    scanned: int
    removed: int


#: a JSON string token in raw bytes (escape pairs included)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def _address_pattern(email: str) -> re.Pattern[str]:
    """The address as a whole (not `notvictim@...` nor `...@example.com.au`), any case."""
    return re.compile(r"(?<![A-Za-z0-9._%+-])" + re.escape(email.strip()) + r"(?![A-Za-z0-9-]|\.[A-Za-z0-9])", re.I)


def mentions_address(body: bytes, email: str) -> bool:
    """Whether a string of the raw JSON `body` holds the address, however escaped (`\\u0040`,
    `\\/`); every occurrence counts, duplicated keys included."""
    wanted = email.strip().lower()
    if not wanted:
        return False
    if wanted.isascii() and wanted.encode() not in body.lower() and b"\\" not in body:
        return False  # the common case: neither the address nor an escape that could spell it
    pattern = _address_pattern(wanted)
    for m in _JSON_STRING.finditer(body):
        token = m.group()
        try:
            text = json.loads(token) if b"\\" in token else token[1:-1].decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            text = token[1:-1].decode("utf-8", "replace")
        if pattern.search(text):
            return True
    return False


def names_customer(doc: Any, *, customer_id: str | None, email: str | None) -> bool:
    """The parsed check (the customer id in the places a customer is named; the address in an
    `email`/`customer_email` attribute); `forget_customer` also reads the raw bytes for the address."""
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
    store: Store,
    *,
    customer_id: str | None = None,
    email: str | None = None,
    now: float,
    page: int = 200,
    organization: str | None = None,
) -> Forgotten:
    """Remove the bodies and headers of every stored delivery naming the customer; counts.
    `organization` (agency mode): that organization's deliveries only (a customer id is one
    organization's)."""
    if not customer_id and not email:
        raise ValueError("a customer id or an email is needed")
    scanned = removed = 0
    after = 0
    while True:
        rows = store.bodies_after(after, limit=page, organization=organization)
        if not rows:
            break
        scanned += len(rows)
        after = rows[-1][0]
        hits = [
            i
            for i, body in rows
            if (email and mentions_address(body, email))
            or names_customer(_doc(body), customer_id=customer_id, email=email)
        ]
        if hits:
            removed += store.remove_bodies(hits, why="forgotten", now=now)
    return Forgotten(scanned, removed)


def _doc(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def record(store: Store, result: Forgotten, *, by_id: bool, by_email: bool, now: float, organization: str = "") -> None:
    """The operations log entry: how many, and by what, never the email itself."""
    store.record_operation(
        "forget",
        subject=None,
        detail={"removed": result.removed, "scanned": result.scanned, "by": _by(by_id, by_email)},
        now=now,
        organization=organization,
    )


def _by(*flags: bool) -> str:
    names: Iterable[str] = (n for n, f in zip(("customer id", "email"), flags, strict=True) if f)
    return " and ".join(names)
