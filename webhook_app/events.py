"""Deliveries and events: what Commerce Layer sent, verified first, then parsed.

`Delivery.from_http(headers, body, secrets=...)` checks the signature on the raw bytes before
anything decodes them, then checks the JSON:API shape. `Event` gives the policy a resolved view
of an order: its attributes plus the included customer, payment source, market, line items and
available wallet entries (JSON:API `included` resolved through `relationships`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from itertools import accumulate
from typing import Any

import orjson

from webhook_app.errors import InvalidPayload
from webhook_app.signing import WebhookSecret, verify
from webhook_app.topics import ANONYMIZATION_TOPICS, ORDER_TOPIC_PREFIX, TOPIC_PATTERN

SIGNATURE_HEADER = "X-CommerceLayer-Signature"
TOPIC_HEADER = "X-CommerceLayer-Topic"
# Headers never stored: credentials a proxy or gateway might pass along, and replay tokens.
_UNSTORED_HEADERS = frozenset(
    {
        "authorization",
        "cookie",
        "set-cookie",
        "proxy-authorization",
        "x-admin-token",
        "x-api-key",
        "x-auth-token",
        "x-webhook-app-replay",
    }
)


def delivery_identity(topic: str, body: bytes, organization: str = "") -> str:
    """Commerce Layer sends no event id: a delivery is identified by its topic and raw body, and in
    agency mode by its organization (the implicit organization's, "", is what it always was)."""
    h = hashlib.sha256(f"{organization}\x01".encode() if organization else b"")
    h.update(topic.encode("utf-8"))
    h.update(b"\x00")
    h.update(body)
    return h.hexdigest()


def replay_identity(identity: str, nonce: str) -> str:
    """A deliberate replay is a new delivery: its identity adds the replay token's nonce."""
    return hashlib.sha256(f"{identity}:replay:{nonce}".encode()).hexdigest()


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (scalars are 0), computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((v, depth) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((v, depth) for v in node if isinstance(v, (dict, list)))
    return deepest


# For `raw_json_depth`: the bytes that are not brackets or quotes (deleted), both kinds of bracket
# as one pair of parentheses (the depth does not care which), and what each does to the depth.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_AS_PARENTHESES = bytes.maketrans(b"{[}]", b"(())")
_STEP = {ord("("): 1, ord(")"): -1}


def raw_json_depth(body: bytes) -> int:
    """`json_depth` of the document `body` encodes, read from the raw bytes, for a body that
    `json.loads` has accepted: once escape pairs are gone, every `"` opens or closes a string,
    so the even pieces between quotes are the structure and only their brackets count. Done by
    bytes methods in C, it is several times faster than walking the decoded document (about
    30 us instead of 290 us of CPU for a 30 KB order), which matters on the intake path."""
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Keep quotes and brackets only, the brackets as `(` and `)` (one C pass). Two quotes side by
    # side are a string with no bracket in it (or the end of one and the start of the next):
    # dropping them keeps every later quote's parity, and leaves only the few strings that hold a
    # bracket to split out.
    structure = body.translate(_AS_PARENTHESES, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in structure:
        structure = b"".join(structure.split(b'"')[::2])
    return _peeled_depth(structure)


def _peeled_depth(structure: bytes) -> int:
    """The depth of balanced parentheses. Each `replace` peels every innermost pair at once (a
    container whose children are all gone), so the passes until nothing is left are the depth:
    a few C passes over a shrinking string for a real document (656, 304, 70, 36, 6, 2 bytes for a
    30 KB order) instead of a Python step per bracket. A pass that peels an eighth or less is a
    deep narrow remainder (long chains): its depth is then counted bracket by bracket, once, so that
    nothing costs more than a few passes over the body."""
    depth = 0
    while structure:
        peeled = structure.replace(b"()", b"")
        depth += 1
        if len(peeled) >= len(structure) - len(structure) // 8:  # also: nothing peeled, never a loop
            return depth + max(accumulate(map(_STEP.__getitem__, peeled)), default=0)
        structure = peeled
    return depth


def parse_document(body: bytes, *, max_depth: int = 64) -> dict[str, Any]:
    """Decode a JSON:API document and check the parts the service relies on.

    orjson decodes the raw bytes (about 2.3x faster than `json.loads` on a 30 KB order) and is
    strict where the service must be: UTF-8 without a BOM, no NaN or Infinity, no lone surrogate
    (its `\\u` escapes must pair), nesting at most 1024. Our own limit, `max_depth`, is read from
    the raw bytes afterwards (`raw_json_depth`)."""
    doc = _decode(body, max_depth)
    if raw_json_depth(body) > max_depth:
        raise InvalidPayload(f"JSON nesting is deeper than {max_depth}")
    if not isinstance(doc, dict):
        raise InvalidPayload("body is not a JSON:API document (expected an object)")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise InvalidPayload("JSON:API document has no `data` object")
    _check_primary(data)
    included = doc.get("included", [])
    if included is not None and not isinstance(included, list):
        raise InvalidPayload("`included` must be an array")
    _check_included(included or [])
    return doc


def _decode(body: bytes, max_depth: int) -> Any:
    """orjson's decoding, its refusals said in the service's words."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        if "UTF-8" in msg and "byte order mark" not in msg:
            raise InvalidPayload("body is not valid UTF-8") from None
        if "surrogate" in msg:
            raise InvalidPayload("body has a \\u escape for half a surrogate pair (not Unicode text)") from None
        if "depth limit" in msg:
            raise InvalidPayload(f"JSON nesting is deeper than {max_depth}") from None
        raise InvalidPayload(f"body is not valid JSON: {msg[:120]}") from None


def _check_primary(data: dict[str, Any]) -> None:
    for key in ("type", "id"):
        v = data.get(key)
        # Stored in text columns and shown on the admin page: no NUL (PostgreSQL refuses it, a
        # 500), no control or bidi-override characters.
        if not isinstance(v, str) or not v or len(v) > 128 or not v.isprintable():
            raise InvalidPayload(f"`data.{key}` must be a string of 1 to 128 printable characters")
    for key in ("attributes", "relationships", "meta"):
        if key in data and data[key] is not None and not isinstance(data[key], dict):
            raise InvalidPayload(f"`data.{key}` must be an object")


def _check_included(included: list[Any]) -> None:
    for n, item in enumerate(included):
        if not isinstance(item, dict) or not isinstance(item.get("type"), str) or not isinstance(item.get("id"), str):
            raise InvalidPayload(f"`included[{n}]` must be an object with string `type` and `id`")
        if "attributes" in item and item["attributes"] is not None and not isinstance(item["attributes"], dict):
            raise InvalidPayload(f"`included[{n}].attributes` must be an object")


def check_topic(topic: str | None) -> str:
    if not topic:
        raise InvalidPayload(f"missing {TOPIC_HEADER} header")
    topic = topic.strip()
    if not TOPIC_PATTERN.match(topic):
        raise InvalidPayload(f"{TOPIC_HEADER} is not a topic like `orders.place`")
    return topic


def is_order_topic(topic: str) -> bool:
    return topic.startswith(ORDER_TOPIC_PREFIX)


def is_anonymization_topic(topic: str) -> bool:
    return topic in ANONYMIZATION_TOPICS


_TOPIC_IN_NAME = re.compile(r"^([a-z][a-z0-9_]{0,63}\.[a-z][a-z0-9_]{0,63})\.")


def topic_from_file_name(path: str) -> str | None:
    """The topic a body file's name starts with, followed by more of the name: `orders.place.json`,
    `orders.place.42.json` -> `orders.place`; `body.json` -> None (the caller asks for a topic)."""
    m = _TOPIC_IN_NAME.match(path.replace("\\", "/").rsplit("/", 1)[-1])
    return m.group(1) if m else None


@dataclass(frozen=True)
class Delivery:
    """One verified webhook call, ready to be stored."""

    topic: str
    body: bytes = field(repr=False)
    identity: str
    secret_label: str
    resource_type: str
    resource_id: str
    headers: dict[str, str] = field(default_factory=dict)
    # The organization whose secret signed it (organizations.py): "" without agency mode.
    organization: str = ""

    @property
    def is_order(self) -> bool:
        return is_order_topic(self.topic) and self.resource_type == "orders"

    @property
    def is_anonymization(self) -> bool:
        """A customer's anonymization event: the worker honours it (ops/anonymization.py)."""
        return is_anonymization_topic(self.topic) and self.resource_type == "customers"

    @property
    def queued(self) -> bool:
        """Stored with a job for the worker (`queued`), or only kept (`ignored`)."""
        return self.is_order or self.is_anonymization

    def as_replay(self, nonce: str) -> Delivery:
        """The same delivery, made distinct from the original (and other replays) by `nonce`."""
        return replace(self, identity=replay_identity(self.identity, nonce))

    @property
    def order_id(self) -> str | None:
        return self.resource_id if self.is_order else None

    def to_row(self) -> dict[str, Any]:
        """Its `deliveries` columns (`DELIVERY_COLUMNS`): every field, the headers as JSON text,
        and the derived `order_id`. The store adds when, in what state and as whose replay."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["headers"] = json.dumps(self.headers)
        row["order_id"] = self.order_id
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Delivery:
        """The delivery a stored row (or a `StoredDelivery`'s fields) holds; a body left out of
        the row (NULL) is empty, headers are JSON text or already a mapping."""
        values = {f.name: row[f.name] for f in fields(cls)}
        headers = values["headers"]
        values["headers"] = json.loads(headers) if isinstance(headers, str) else dict(headers)
        values["body"] = b"" if values["body"] is None else bytes(values["body"])
        return cls(**values)

    @classmethod
    def from_http(
        cls,
        headers: Mapping[str, str],
        body: bytes,
        *,
        secrets: Sequence[WebhookSecret],
        max_depth: int = 64,
        topics: Collection[str] | None = None,
        organization: str = "",
    ) -> Delivery:
        """Verify, then parse. Raises InvalidSignature or InvalidPayload (also for a topic not in
        `topics`, when given)."""
        label = verify(body, signature=_header(headers, SIGNATURE_HEADER), secrets=secrets)
        topic = check_topic(_header(headers, TOPIC_HEADER))
        if topics is not None and topic not in topics:
            raise InvalidPayload(f"{TOPIC_HEADER} is not a topic this service accepts (WEBHOOK_APP_TOPICS adds topics)")
        doc = parse_document(body, max_depth=max_depth)
        data = doc["data"]
        if is_order_topic(topic) and data["type"] != "orders":
            raise InvalidPayload(f"topic {topic} carries a `{data['type']}` resource, not `orders`")
        if is_anonymization_topic(topic) and data["type"] != "customers":
            raise InvalidPayload(f"topic {topic} carries a `{data['type']}` resource, not `customers`")
        return cls(
            topic=topic,
            body=body,
            identity=delivery_identity(topic, body, organization),
            secret_label=label,
            resource_type=data["type"],
            resource_id=data["id"],
            headers=storable_headers(headers),
            organization=organization,
        )


#: the `deliveries` columns `Delivery.to_row` fills, in one order: its fields, then `order_id`
DELIVERY_COLUMNS: tuple[str, ...] = (*(f.name for f in fields(Delivery)), "order_id")


def storable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers worth keeping for audit and replay, without credentials."""
    out: dict[str, str] = {}
    for k, v in headers.items():
        if k.lower() in _UNSTORED_HEADERS:
            continue
        out[k] = v[:1024]
    return out


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """`name`'s value, its case aside; tried as given, then as the WSGI environ spells it
    (`X-Commercelayer-Topic`, what the intake passes), before a look at every header."""
    v = headers.get(name)
    if v is None:
        v = headers.get(name.title())
    if v is None:
        lower = name.lower()
        for k, val in headers.items():
            if k.lower() == lower:
                return val
    return v


# --- the resolved view the policy reads -----------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """A JSON:API resource: type, id, attributes, and relationship linkage."""

    type: str
    id: str
    attributes: Mapping[str, Any]
    relationships: Mapping[str, Any]

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Resource:
        return cls(
            type=str(obj.get("type", "")),
            id=str(obj.get("id", "")),
            attributes=obj.get("attributes") or {},
            relationships=obj.get("relationships") or {},
        )

    def linkage(self, name: str) -> Any:
        rel = self.relationships.get(name)
        return rel.get("data") if isinstance(rel, dict) else None

    def fields(self) -> dict[str, Any]:
        """Attributes plus `id` and `type`, as the policy sees them."""
        out = dict(self.attributes)
        out["id"] = self.id
        out["type"] = self.type
        return out


@dataclass(frozen=True)
class Event:
    """An order event with its included resources resolved."""

    topic: str
    order: Resource
    customer: Resource | None
    payment_source: Resource | None
    payment_source_type: str | None
    market: Resource | None
    line_items: tuple[Resource, ...]
    wallet: tuple[Resource, ...] | None  # available_customer_payment_sources, None if not sent
    # Every included resource by (type, id): what the entries' own linkage points to.
    included: Mapping[tuple[str, str], Resource] = field(default_factory=dict, repr=False)

    @classmethod
    def from_document(cls, topic: str, doc: Mapping[str, Any]) -> Event:
        order = Resource.from_json(doc["data"])
        index: dict[tuple[str, str], Resource] = {}
        for item in doc.get("included") or []:
            r = Resource.from_json(item)
            index[(r.type, r.id)] = r

        def one(name: str) -> tuple[Resource | None, str | None]:
            link = order.linkage(name)
            if isinstance(link, dict) and link.get("type") and link.get("id"):
                t, i = str(link["type"]), str(link["id"])
                return index.get((t, i), Resource(t, i, {}, {})), t
            return None, None

        def many(name: str) -> tuple[Resource, ...] | None:
            links = order.linkage(name)
            if not isinstance(links, list):
                return None
            out = []
            for link in links:
                if isinstance(link, dict) and link.get("type") and link.get("id"):
                    t, i = str(link["type"]), str(link["id"])
                    out.append(index.get((t, i), Resource(t, i, {}, {})))
            return tuple(out)

        customer, _ = one("customer")
        payment_source, ps_type = one("payment_source")
        if ps_type is None:
            details = order.attributes.get("payment_source_details")
            if isinstance(details, dict) and isinstance(details.get("type"), str):
                ps_type = _pluralize_source_type(details["type"])
        market, _ = one("market")
        return cls(
            topic=topic,
            order=order,
            customer=customer,
            payment_source=payment_source,
            payment_source_type=ps_type,
            market=market,
            line_items=many("line_items") or (),
            wallet=many("available_customer_payment_sources"),
            included=index,
        )

    @classmethod
    def from_body(cls, topic: str, body: bytes, *, max_depth: int = 64) -> Event:
        return cls.from_document(topic, parse_document(body, max_depth=max_depth))

    @property
    def order_id(self) -> str:
        return self.order.id

    @property
    def is_guest(self) -> bool:
        return bool(self.order.attributes.get("guest"))

    @property
    def customer_id(self) -> str | None:
        return self.customer.id if self.customer else None


def _pluralize_source_type(singular: str) -> str:
    """`payment_source_details.type` is singular (`wire_transfer`); resource types are plural."""
    return singular if singular.endswith("s") else singular + "s"
