"""Records -> JSON:API documents shaped like Commerce Layer's.

One registry (`TYPES`) says, per resource type, how to find a record, which attributes it has and
which relationships, and for each relationship how to resolve it (or that the sandbox does not
model it: then it is rendered with links, and its related route answers empty).

Rules (https://docs.commercelayer.io/core/including-associations, /core/sparse-fieldsets):
- every relationship carries `links` (`self`, `related`); `data` (linkage) is added only for the
  relationship paths the request's `include` (or the webhook's `include_resources`) names, on the
  main resource and on included resources alike (`include=a.b` gives `a` linkage on the main
  resource and `b` linkage on each included `a`);
- attributes are always all present, unset ones as `null`, as in real bodies;
- `fields[TYPE]=x,y` keeps only the named attributes and relationships of that type;
- `base` is what links start with: `""` for webhook bodies (relative links, `/api/orders/ID`),
  the public root URL for API answers;
- API answers carry a `meta` with `mode`, `organization_id` and a per-answer `trace_id`, on the
  document and on every resource; webhook bodies carry `{mode, organization_id}` on resources
  only, as the real sample does.

Callers hold `state.lock` while rendering so that a document is a consistent snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from commercelayer_sandbox.errors import ApiError
from commercelayer_sandbox.model import (
    CARD_TYPES,
    PAYMENT_SOURCE_TYPES,
    Customer,
    Event,
    EventCallback,
    LineItem,
    Market,
    Order,
    PaymentMethod,
    PaymentSource,
    WalletEntry,
    Webhook,
)
from commercelayer_sandbox.state import SandboxState
from commercelayer_sandbox.timeutil import iso, short_id

AMOUNTS = (
    "subtotal_amount",
    "shipping_amount",
    "payment_method_amount",
    "discount_amount",
    "adjustment_amount",
    "gift_card_amount",
    "total_tax_amount",
    "subtotal_tax_amount",
    "shipping_tax_amount",
    "payment_method_tax_amount",
    "adjustment_tax_amount",
    "total_amount",
    "total_taxable_amount",
    "subtotal_taxable_amount",
    "shipping_taxable_amount",
    "payment_method_taxable_amount",
    "adjustment_taxable_amount",
    "total_amount_with_taxes",
    "fees_amount",
)
_CURRENCIES = {"USD": ("$", ",", "."), "EUR": ("€", ".", ","), "GBP": ("£", ",", ".")}


def formatted_amount(cents: int, currency: str) -> str:
    """`15300, "USD"` -> `$153.00`; `15300, "EUR"` -> `€153,00`."""
    symbol, thousands, decimal = _CURRENCIES.get(currency, (f"{currency} ", ",", "."))
    units, rest = divmod(abs(cents), 100)
    grouped = f"{units:,}".replace(",", thousands)
    return f"{'-' if cents < 0 else ''}{symbol}{grouped}{decimal}{rest:02d}"


def _money(attrs: dict[str, Any], name: str, cents: int | None, currency: str) -> None:
    """Add the Commerce Layer amount triple `NAME_cents`, `NAME_float`, `formatted_NAME`."""
    attrs[f"{name}_cents"] = cents
    attrs[f"{name}_float"] = None if cents is None else cents / 100
    attrs[f"formatted_{name}"] = None if cents is None else formatted_amount(cents, currency)


def singular(resource_type: str) -> str:
    return resource_type[:-1] if resource_type.endswith("s") else resource_type


# -- the type registry -------------------------------------------------------------------------

Ref = tuple[str, Any]  # (resource type, record)


@dataclass(frozen=True)
class Rel:
    """One relationship: to-many or to-one, and how to resolve it (None: not modelled)."""

    many: bool = False
    resolve: Callable[[SandboxState, Any], Any] | None = None


def _unmodelled(*names: str, many: Sequence[str] = ()) -> dict[str, Rel]:
    return {n: Rel(many=n in many) for n in names}


def _order_customer(s: SandboxState, o: Order) -> Ref | None:
    c = s.customers.get(o.customer_id or "")
    return ("customers", c) if c else None


def _order_source(s: SandboxState, o: Order) -> Ref | None:
    ps = s.payment_sources.get(o.payment_source_id or "")
    return (ps.type, ps) if ps else None


def _order_method(s: SandboxState, o: Order) -> Ref | None:
    pm = s.payment_methods.get(o.payment_method_id or "")
    return ("payment_methods", pm) if pm else None


def _order_wallet(s: SandboxState, o: Order) -> list[Ref]:
    return [] if o.guest else [("customer_payment_sources", w) for w in s.wallet_of(o.customer_id)]


def _order_payment_methods(s: SandboxState, o: Order) -> list[Ref]:
    return [
        ("payment_methods", pm)
        for pm in sorted(s.payment_methods.values(), key=lambda p: (p.created_at, p.id))
        if pm.market_id == o.market_id and pm.currency_code == o.currency_code
    ]


def _order_events(s: SandboxState, o: Order) -> list[Ref]:
    return [("events", e) for e in sorted(s.events.values(), key=lambda e: (e.created_at, e.id)) if e.order_id == o.id]


def _entry_source(s: SandboxState, w: WalletEntry) -> Ref | None:
    ps = s.payment_sources.get(w.payment_source_id)
    return (ps.type, ps) if ps else None


def _entry_method(s: SandboxState, w: WalletEntry) -> Ref | None:
    pm = s.payment_methods.get(w.payment_method_id or "")
    return ("payment_methods", pm) if pm else None


def _sku_of(s: SandboxState, li: LineItem) -> Ref | None:
    return ("skus", li) if li.item_type == "skus" else None


def _find_sku(s: SandboxState, ident: str) -> LineItem | None:
    return next((li for li in s.line_items.values() if sku_id(li.sku_code) == ident), None)


def sku_id(code: str) -> str:
    return short_id("sku", code)


ORDER_RELS: dict[str, Rel] = {
    "market": Rel(resolve=lambda s, o: ("markets", s.markets[o.market_id])),
    "customer": Rel(resolve=_order_customer),
    "shipping_address": Rel(),
    "billing_address": Rel(),
    "available_payment_methods": Rel(many=True, resolve=_order_payment_methods),
    "available_customer_payment_sources": Rel(many=True, resolve=_order_wallet),
    "available_free_skus": Rel(many=True),
    "available_free_bundles": Rel(many=True),
    "payment_method": Rel(resolve=_order_method),
    "payment_source": Rel(resolve=_order_source),
    "line_items": Rel(many=True, resolve=lambda s, o: [("line_items", s.line_items[i]) for i in o.line_item_ids]),
    **{
        name: Rel(many=True)
        for name in (
            "shipments",
            "transactions",
            "authorizations",
            "captures",
            "voids",
            "refunds",
            "returns",
            "order_subscriptions",
            "order_copies",
            "attachments",
        )
    },
    "events": Rel(many=True, resolve=lambda s, o: _order_events(s, o)),
}
CUSTOMER_RELS: dict[str, Rel] = {
    "customer_group": Rel(),
    "customer_addresses": Rel(many=True),
    "customer_payment_sources": Rel(
        many=True,
        resolve=lambda s, c: [("customer_payment_sources", w) for w in s.wallet_of(c.id)],
    ),
    "customer_subscriptions": Rel(many=True),
    "orders": Rel(
        many=True,
        resolve=lambda s, c: [
            ("orders", o)
            for o in sorted(s.orders.values(), key=lambda o: (o.created_at, o.id))
            if o.customer_id == c.id
        ],
    ),
    **_unmodelled(
        "order_subscriptions",
        "returns",
        "sku_lists",
        "attachments",
        "events",
        "tags",
        many=("order_subscriptions", "returns", "sku_lists", "attachments", "events", "tags"),
    ),
}
MARKET_RELS = _unmodelled(
    "merchant",
    "price_list",
    "inventory_model",
    "tax_calculator",
    "customer_group",
    "attachments",
    many=("attachments",),
)
LINE_ITEM_RELS: dict[str, Rel] = {
    "order": Rel(resolve=lambda s, li: ("orders", s.orders[li.order_id])),
    "item": Rel(resolve=_sku_of),
    **_unmodelled(
        "line_item_options",
        "shipment_line_items",
        "stock_line_items",
        "stock_transfers",
        many=("line_item_options", "shipment_line_items", "stock_line_items", "stock_transfers"),
    ),
}
SKU_RELS = _unmodelled(
    "shipping_category",
    "prices",
    "stock_items",
    "delivery_lead_times",
    "attachments",
    many=("prices", "stock_items", "delivery_lead_times", "attachments"),
)
PAYMENT_SOURCE_RELS: dict[str, Rel] = {
    "order": Rel(resolve=lambda s, ps: ("orders", s.orders[ps.order_id]) if ps.order_id in s.orders else None),
    "payment_gateway": Rel(),
}
WALLET_RELS: dict[str, Rel] = {
    "customer": Rel(resolve=lambda s, w: ("customers", s.customers[w.customer_id])),
    "payment_method": Rel(resolve=_entry_method),
    "payment_source": Rel(resolve=_entry_source),
}
PAYMENT_METHOD_RELS: dict[str, Rel] = {
    "market": Rel(resolve=lambda s, pm: ("markets", s.markets[pm.market_id])),
    "payment_gateway": Rel(),
    "attachments": Rel(many=True),
}
WEBHOOK_RELS: dict[str, Rel] = {
    "last_event_callbacks": Rel(
        many=True, resolve=lambda s, h: [("event_callbacks", c) for c in s.callbacks_for(h.id)]
    ),
}
EVENT_RELS: dict[str, Rel] = {
    "webhooks": Rel(many=True, resolve=lambda s, e: [("webhooks", h) for h in s.webhooks_for(e.topic)]),
    "last_event_callbacks": Rel(
        many=True, resolve=lambda s, e: [("event_callbacks", c) for c in reversed(s.callbacks) if c.event_id == e.id]
    ),
}
CALLBACK_RELS: dict[str, Rel] = {
    "webhook": Rel(resolve=lambda s, c: ("webhooks", s.webhooks[c.webhook_id]) if c.webhook_id in s.webhooks else None),
}


@dataclass(frozen=True)
class TypeSpec:
    rels: Mapping[str, Rel]
    find: Callable[[SandboxState, str], Any]


def _source_finder(ptype: str) -> Callable[[SandboxState, str], Any]:
    def find(s: SandboxState, ident: str) -> Any:
        ps = s.payment_sources.get(ident)
        return ps if ps is not None and ps.type == ptype else None

    return find


TYPES: dict[str, TypeSpec] = {
    "orders": TypeSpec(ORDER_RELS, lambda s, i: s.orders.get(i)),
    "customers": TypeSpec(CUSTOMER_RELS, lambda s, i: s.customers.get(i)),
    "markets": TypeSpec(MARKET_RELS, lambda s, i: s.markets.get(i)),
    "line_items": TypeSpec(LINE_ITEM_RELS, lambda s, i: s.line_items.get(i)),
    "skus": TypeSpec(SKU_RELS, _find_sku),
    "customer_payment_sources": TypeSpec(WALLET_RELS, lambda s, i: s.wallet.get(i)),
    "payment_methods": TypeSpec(PAYMENT_METHOD_RELS, lambda s, i: s.payment_methods.get(i)),
    "webhooks": TypeSpec(WEBHOOK_RELS, lambda s, i: s.webhooks.get(i)),
    "event_callbacks": TypeSpec(CALLBACK_RELS, lambda s, i: next((c for c in s.callbacks if c.id == i), None)),
    "events": TypeSpec(EVENT_RELS, lambda s, i: s.events.get(i)),
    **{t: TypeSpec(PAYMENT_SOURCE_RELS, _source_finder(t)) for t in sorted(PAYMENT_SOURCE_TYPES)},
    # wire transfers have no gateway (resources.json)
    "wire_transfers": TypeSpec({"order": PAYMENT_SOURCE_RELS["order"]}, _source_finder("wire_transfers")),
}
#: Relationship targets by (type, relationship), for validating include paths. Polymorphic
#: `payment_source` targets every payment source type (they share their relationships).
_TARGETS: dict[tuple[str, str], str] = {
    ("orders", "market"): "markets",
    ("orders", "customer"): "customers",
    ("orders", "available_payment_methods"): "payment_methods",
    ("orders", "available_customer_payment_sources"): "customer_payment_sources",
    ("orders", "payment_method"): "payment_methods",
    ("orders", "payment_source"): "stripe_payments",
    ("orders", "line_items"): "line_items",
    ("orders", "events"): "events",
    ("events", "webhooks"): "webhooks",
    ("events", "last_event_callbacks"): "event_callbacks",
    ("customers", "customer_payment_sources"): "customer_payment_sources",
    ("customers", "orders"): "orders",
    ("line_items", "order"): "orders",
    ("line_items", "item"): "skus",
    ("customer_payment_sources", "customer"): "customers",
    ("customer_payment_sources", "payment_method"): "payment_methods",
    ("customer_payment_sources", "payment_source"): "stripe_payments",
    ("payment_methods", "market"): "markets",
    ("webhooks", "last_event_callbacks"): "event_callbacks",
    ("event_callbacks", "webhook"): "webhooks",
    **{(t, "order"): "orders" for t in PAYMENT_SOURCE_TYPES},
}

IncludeTree = dict[str, "IncludeTree"]


def invalid_include(path: str, rtype: str) -> ApiError:
    return ApiError(
        400,
        "INVALID_INCLUDE",
        "Invalid include",
        f"{path} is not a valid includable relationship of {rtype}.",
        meta={"parameter": "include"},
    )


def parse_include(raw: str | Sequence[str] | None, rtype: str) -> IncludeTree:
    """`"a.b,c"` -> `{"a": {"b": {}}, "c": {}}`, checked against the registry (400 if invalid).

    Only relationships the sandbox models can be included (others are refused, not faked)."""
    if raw is None:
        return {}
    paths = [p.strip() for p in raw.split(",")] if isinstance(raw, str) else list(raw)
    tree: IncludeTree = {}
    for path in paths:
        if not path:
            continue
        node, here = tree, rtype
        for segment in path.split("."):
            rel = TYPES[here].rels.get(segment)
            target = _TARGETS.get((here, segment))
            if rel is None or rel.resolve is None or target is None:
                raise invalid_include(path, rtype)
            node = node.setdefault(segment, {})
            here = target
    return tree


def include_paths(tree: IncludeTree, prefix: str = "") -> list[str]:
    out = []
    for name, sub in tree.items():
        out.append(prefix + name)
        out.extend(include_paths(sub, f"{prefix}{name}."))
    return out


def parse_fields(args: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """`fields[orders]=number,status` -> `{"orders": {"number", "status"}}`; 400 if invalid."""
    out: dict[str, frozenset[str]] = {}
    for key, value in args.items():
        if not key.startswith("fields"):
            continue
        if not (key.startswith("fields[") and key.endswith("]")):
            raise ApiError(400, "INVALID_RESOURCE", "Invalid resource", f"{key} is not valid.")
        rtype = key[len("fields[") : -1]
        if rtype not in TYPES:
            raise ApiError(
                400,
                "INVALID_RESOURCE",
                "Invalid resource",
                f"{rtype} is not a valid resource.",
                meta={"parameter": key},
            )
        names = frozenset(n for n in value.split(",") if n)
        known = field_names(rtype)
        for name in sorted(names):
            if name not in known:
                raise ApiError(
                    400,
                    "INVALID_FIELD",
                    "Invalid field",
                    f"{name} is not a valid field for {rtype}.",
                    meta={"parameter": key},
                )
        out[rtype] = names
    return out


# -- attributes ----------------------------------------------------------------------------------

ORDER_TIMES = (
    "placed_at",
    "approved_at",
    "cancelled_at",
    "payment_updated_at",
    "fulfillment_updated_at",
)


def order_attributes(state: SandboxState, o: Order) -> dict[str, Any]:
    """Every attribute of the real order sample, in its order; unset ones null."""
    subtotal = state.order_subtotal(o)
    total = subtotal + o.shipping_amount_cents
    currency = o.currency_code
    items = [state.line_items[i] for i in o.line_item_ids]
    source = state.payment_sources.get(o.payment_source_id or "")
    attrs: dict[str, Any] = {
        "number": o.number,
        "autorefresh": o.extra.get("autorefresh", True),
        "status": o.status,
        "payment_status": o.payment_status,
        "fulfillment_status": o.fulfillment_status,
        "guest": o.guest,
        "editable": o.status in ("draft", "pending", "editing"),
        "customer_email": o.customer_email,
        "language_code": o.language_code,
        "currency_code": currency,
        "tax_included": False,
        "tax_rate": None,
        "freight_taxable": None,
        "requires_billing_info": False,
        "country_code": o.country_code,
    }
    for key in (
        "shipping_country_code_lock",
        "coupon_code",
        "gift_card_code",
        "gift_card_or_coupon_code",
    ):
        attrs[key] = o.extra.get(key)
    values = {
        "subtotal_amount": subtotal,
        "shipping_amount": o.shipping_amount_cents,
        "total_amount": total,
        "total_taxable_amount": total,
        "subtotal_taxable_amount": subtotal,
        "shipping_taxable_amount": o.shipping_amount_cents,
        "total_amount_with_taxes": total,
    }
    for name in AMOUNTS:
        _money(attrs, name, values.get(name, 0), currency)
    _money(attrs, "duty_amount", None, currency)
    attrs["skus_count"] = sum(li.quantity for li in items if li.item_type == "skus")
    attrs["line_item_options_count"] = 0
    attrs["shipments_count"] = 1 if items else 0
    attrs["tax_calculations_count"] = 0
    attrs["payment_source_details"] = payment_source_details(source) if source else None
    attrs["token"] = o.token
    for key in ("cart_url", "return_url", "terms_url", "privacy_url", "checkout_url"):
        attrs[key] = o.extra.get(key)
    for key in ORDER_TIMES:
        value = getattr(o, key)
        attrs[key] = None if value is None else iso(value)
    attrs["refreshed_at"] = None
    attrs["archived_at"] = None if o.archived_at is None else iso(o.archived_at)
    attrs["expires_at"] = None
    attrs["created_at"] = iso(o.created_at)
    attrs["updated_at"] = iso(o.updated_at)
    attrs["reference"] = o.reference
    attrs["reference_origin"] = o.reference_origin
    attrs["metadata"] = o.metadata
    return attrs


def customer_attributes(state: SandboxState, c: Customer) -> dict[str, Any]:
    return {
        "email": c.email,
        "status": c.status,
        "has_password": c.has_password,
        "created_at": iso(c.created_at),
        "updated_at": iso(c.updated_at),
        "reference": c.reference,
        "reference_origin": None,
        "metadata": c.metadata,
        "anonymization_status": c.anonymization_status,
        "anonymization_info": c.anonymization_info,
    }


def market_attributes(state: SandboxState, m: Market) -> dict[str, Any]:
    return {
        "number": m.number,
        "name": m.name,
        "code": m.code,
        "facebook_pixel_id": None,
        "checkout_url": "",
        "external_prices_url": "",
        "private": False,
        "created_at": iso(m.created_at),
        "updated_at": iso(m.updated_at),
        "reference": m.reference,
        "reference_origin": None,
        "metadata": m.metadata,
    }


def line_item_attributes(state: SandboxState, li: LineItem) -> dict[str, Any]:
    order = state.orders.get(li.order_id)
    cur = order.currency_code if order else "EUR"
    attrs: dict[str, Any] = {
        "sku_code": li.sku_code if li.item_type == "skus" else None,
        "bundle_code": None,
        "quantity": li.quantity,
        "currency_code": cur,
    }
    _money(attrs, "unit_amount", li.unit_amount_cents, cur)
    _money(attrs, "options_amount", 0, cur)
    attrs.update({"discount_cents": 0, "discount_float": 0.0})
    attrs["formatted_discount"] = formatted_amount(0, cur)
    _money(attrs, "total_amount", li.total_amount_cents, cur)
    attrs.update({"tax_amount_cents": 0, "tax_amount_float": 0.0})
    attrs["formatted_tax_amount"] = formatted_amount(0, cur)
    attrs.update(
        {
            "name": li.name,
            "image_url": None,
            "discount_breakdown": {},
            "tax_rate": 0,
            "tax_breakdown": {},
            "item_type": li.item_type,
            "created_at": iso(li.created_at),
            "updated_at": iso(li.updated_at),
            "reference": None,
            "reference_origin": None,
            "metadata": li.metadata,
        }
    )
    return attrs


def sku_attributes(state: SandboxState, li: LineItem) -> dict[str, Any]:
    """A SKU as far as the sandbox knows it: from a line item's code and name."""
    return {
        "code": li.sku_code,
        "name": li.name,
        "description": None,
        "image_url": None,
        "pieces_per_pack": None,
        "weight": None,
        "unit_of_weight": None,
        "hs_tariff_number": None,
        "do_not_ship": False,
        "do_not_track": False,
        "inventory": None,
        "created_at": iso(li.created_at),
        "updated_at": iso(li.created_at),
        "reference": None,
        "reference_origin": None,
        "metadata": {},
    }


def wallet_attributes(state: SandboxState, w: WalletEntry) -> dict[str, Any]:
    return {
        "name": w.name,
        "customer_token": w.customer_token,
        "payment_source_token": w.payment_source_token,
        "created_at": iso(w.created_at),
        "updated_at": iso(w.updated_at),
        "reference": w.reference,
        "reference_origin": None,
        "metadata": w.metadata,
    }


def payment_method_attributes(state: SandboxState, pm: PaymentMethod) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "payment_source_type": pm.payment_source_type,
        "name": pm.name,
        "currency_code": pm.currency_code,
        "moto": False,
        "disabled_at": None,
    }
    _money(attrs, "price_amount", 0, pm.currency_code)
    attrs.update(
        {
            "created_at": iso(pm.created_at),
            "updated_at": iso(pm.updated_at),
            "reference": None,
            "reference_origin": None,
            "metadata": {},
        }
    )
    return attrs


def webhook_attributes(state: SandboxState, w: Webhook) -> dict[str, Any]:
    return {
        "name": w.name,
        "topic": w.topic,
        "callback_url": w.callback_url,
        "include_resources": list(w.include_resources),
        "circuit_state": w.circuit_state,
        "circuit_failure_count": w.circuit_failure_count,
        "shared_secret": w.shared_secret,
        "created_at": iso(w.created_at),
        "updated_at": iso(w.updated_at),
        "reference": w.reference,
        "reference_origin": None,
        "metadata": w.metadata,
    }


def callback_attributes(state: SandboxState, c: EventCallback) -> dict[str, Any]:
    return {
        "callback_url": c.callback_url,
        "payload": callback_payload(c),
        "response_code": None if c.response_code is None else str(c.response_code),
        "response_message": c.response_message,
        "created_at": iso(c.created_at),
        "updated_at": iso(c.created_at),
        "reference": None,
        "reference_origin": None,
        "metadata": {},
    }


def event_attributes(state: SandboxState, e: Event) -> dict[str, Any]:
    """The `events` resource: its name is the topic (resources.json: name, timestamps, reference,
    metadata)."""
    return {
        "name": e.topic,
        "created_at": iso(e.created_at),
        "updated_at": iso(e.updated_at or e.created_at),
        "reference": e.reference,
        "reference_origin": e.reference_origin,
        "metadata": e.metadata,
    }


def callback_payload(c: EventCallback) -> Any:
    """The body a callback carried, decoded (the `payload` attribute is an object)."""
    return json.loads(c.body)


def payment_source_details(ps: PaymentSource) -> dict[str, Any]:
    """The order's `payment_source_details` attribute (`{"type": "wire_transfer"}` in samples)."""
    details: dict[str, Any] = {"type": singular(ps.type)}
    if ps.type == "stripe_payments":
        details.update(
            {
                "payment_method_id": ps.payment_source_token,
                "payment_method_type": "card",
                "payment_method_details": _stripe_card(ps),
            }
        )
    return details


def _stripe_card(ps: PaymentSource) -> dict[str, Any]:
    return {
        "brand": ps.card_brand,
        "last4": ps.card_last4,
        "exp_month": ps.card_exp_month,
        "exp_year": ps.card_exp_year,
        "fingerprint": ps.card_fingerprint,
    }


def payment_instrument(ps: PaymentSource) -> dict[str, Any]:
    """`payment_instrument`: the key names Commerce Layer's checkout reads (`card_type`,
    `card_last_digits`, `card_expiry_month`, `card_expiry_year`, `issuer_type`)."""
    if ps.type in CARD_TYPES:
        return {
            "issuer_type": "card",
            "card_type": ps.card_brand,
            "card_last_digits": ps.card_last4,
            "card_expiry_month": str(ps.card_exp_month),
            "card_expiry_year": str(ps.card_exp_year),
        }
    return {"issuer_type": singular(ps.type).removesuffix("_payment")}


def payment_source_attributes(state: SandboxState, ps: PaymentSource) -> dict[str, Any]:
    """Type-specific attributes (resources.json's per-type fields), then the common ones.

    The gateway tokens agree with the wallet entries made from the record: `customer_token` and
    `payment_source_token` appear where each gateway carries them (see docs/sandbox.md,
    *What it models (from Commerce Layer's documentation)*)."""
    order = state.orders.get(ps.order_id or "")
    amount = state.order_total(order) if order else 0
    currency = order.currency_code if order else "EUR"
    intent: dict[str, Any] = {}
    _money(intent, "intent_amount", amount, currency)
    token, customer = ps.payment_source_token, ps.customer_token
    specific: dict[str, Any]
    if ps.type == "stripe_payments":
        specific = {
            "stripe_id": f"pi_{ps.id}",
            "client_secret": f"pi_{ps.id}_secret_sandbox",
            "publishable_key": "pk_test_sandbox",
            "options": ps.options,
            "payment_method": {
                "id": token,
                "type": "card",
                "customer": customer,
                "card": _stripe_card(ps),
            },
            "mismatched_amounts": False,
            **intent,
        }
    elif ps.type == "adyen_payments":
        request_data = ps.gateway.get("payment_request_data")
        response: dict[str, Any] = {"resultCode": "Authorised", "pspReference": f"psp{ps.id}"}
        if ps.gateway.get("recurring", True):
            response["additionalData"] = {
                "recurring.recurringDetailReference": token,
                "recurring.shopperReference": customer,
            }
        specific = {
            "public_key": "sandbox_adyen_public_key",
            "payment_methods": {},
            "payment_request_data": request_data,
            "payment_request_details": {},
            "payment_response": response,
            "mismatched_amounts": False,
        }
    elif ps.type == "axerve_payments":
        specific = {
            "return_url": "https://example.com/checkout/return",
            "payment_request_data": {"request_token": token},
            "mismatched_amounts": False,
            **intent,
        }
    elif ps.type == "braintree_payments":
        specific = {
            "client_token": "sandbox_braintree_client_token",
            "payment_method_nonce": ps.gateway.get("payment_method_nonce", f"nonce-{ps.id}"),
            "payment_id": token,
            "local": False,
            "options": ps.options,
        }
    elif ps.type == "checkout_com_payments":
        source = ps.gateway.get("payment_response_source", True)
        cko_response: dict[str, Any] = {"status": "Authorized", "customer": {"id": customer}}
        if source:
            cko_response["source"] = {"id": token, "type": "card", "last4": ps.card_last4}
        specific = {
            "public_key": "pk_sbox_sandbox",
            "payment_type": "token",
            "token": f"tok_{ps.id}",
            "customer_token": customer,
            "source_id": token,
            "payment_response": cko_response,
            "mismatched_amounts": False,
        }
    elif ps.type == "external_payments":
        specific = {"payment_source_token": token, "options": ps.options}
    elif ps.type == "klarna_payments":
        specific = {
            "session_id": f"klarna-session-{ps.id}",
            "client_token": "sandbox_klarna_client_token",
            "payment_methods": [],
            "auth_token": ps.gateway.get("auth_token", token) or None,
            "mismatched_amounts": False,
            **intent,
        }
    elif ps.type == "paypal_payments":
        specific = {
            "return_url": "https://example.com/checkout/return",
            "cancel_url": "https://example.com/checkout/cancel",
            "note_to_payer": "",
            "paypal_payer_id": customer,
            "name": "sandbox",
            "paypal_id": token,
            "status": "approved",
            "approval_url": "https://example.com/paypal/approve",
            "mismatched_amounts": False,
            **intent,
        }
    elif ps.type == "satispay_payments":
        specific = {
            "payment_id": token,
            "flow": "MATCH_CODE",
            "status": "ACCEPTED",
            "redirect_url": "https://example.com/checkout/return",
            "payment_url": "https://example.com/satispay/pay",
            "payment_response": {},
        }
    else:  # wire_transfers
        specific = {}
    return {
        **specific,
        "payment_instrument": payment_instrument(ps),
        "created_at": iso(ps.created_at),
        "updated_at": iso(ps.updated_at),
        "reference": None,
        "reference_origin": None,
        "metadata": ps.metadata,
    }


_ATTRIBUTES: dict[str, Callable[[SandboxState, Any], dict[str, Any]]] = {
    "orders": order_attributes,
    "customers": customer_attributes,
    "markets": market_attributes,
    "line_items": line_item_attributes,
    "skus": sku_attributes,
    "customer_payment_sources": wallet_attributes,
    "payment_methods": payment_method_attributes,
    "webhooks": webhook_attributes,
    "event_callbacks": callback_attributes,
    "events": event_attributes,
    **{t: payment_source_attributes for t in PAYMENT_SOURCE_TYPES},
}


@cache
def field_names(rtype: str) -> frozenset[str]:
    """Every attribute and relationship name of a type (for checking `fields[TYPE]`)."""
    state = SandboxState()
    dummies: dict[str, Any] = {
        "orders": Order("x", 1, "m", None, None, True, "draft", "unpaid", "unfulfilled", None, [],
                        "EUR", "en", "IT", 0, "t", 0, 0),
        "customers": Customer("x", "a@b.c", False, "prospect", 0, 0),
        "markets": Market("x", 1, "M", "m", 0, 0),
        "line_items": LineItem("x", "o", "SKU", "n", 1, 1, 0, 0),
        "skus": LineItem("x", "o", "SKU", "n", 1, 1, 0, 0),
        "customer_payment_sources": WalletEntry("x", "c", "p", "stripe_payments", "n", "", "",
                                                0, 0),
        "payment_methods": PaymentMethod("x", "m", "stripe_payments", "n", "EUR", 0, 0),
        "webhooks": Webhook("x", "n", "orders.place", "http://x/", [], "s"),
        "event_callbacks": EventCallback("x", "h", "e", "t", 1, "u", b"{}", "", None, "", True,
                                         0.0, 0),
        "events": Event("x", "orders.place", "o", 0, []),
    }  # fmt: skip
    record = dummies.get(rtype) or PaymentSource("x", rtype, None, "", "")
    return frozenset(_ATTRIBUTES[rtype](state, record)) | frozenset(TYPES[rtype].rels)


def resource_ref(rtype: str, record: Any) -> dict[str, str]:
    return {"type": rtype, "id": record.id}


# -- documents -----------------------------------------------------------------------------------


class Renderer:
    """Renders the records of one `SandboxState` for one answer (or one webhook body).

    `trace_id` None means a webhook body: no document-level meta, resource meta without a
    trace id. `fields` is the parsed sparse fieldset (`parse_fields`)."""

    def __init__(
        self,
        state: SandboxState,
        *,
        base: str,
        organization_id: str,
        mode: str = "test",
        trace_id: str | None = None,
        fields: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.state = state
        self.base = base
        self.meta: dict[str, Any] = {"mode": mode, "organization_id": organization_id}
        if trace_id is not None:
            self.meta["trace_id"] = trace_id
        self.api = trace_id is not None
        self.fields = dict(fields or {})

    # -- building blocks --

    def self_link(self, rtype: str, rid: str) -> dict[str, str]:
        return {"self": f"{self.base}/api/{rtype}/{rid}"}

    def rel_links(self, rtype: str, rid: str, name: str) -> dict[str, str]:
        return {
            "self": f"{self.base}/api/{rtype}/{rid}/relationships/{name}",
            "related": f"{self.base}/api/{rtype}/{rid}/{name}",
        }

    def resolve(self, rtype: str, record: Any, name: str) -> Any:
        """A relationship's target(s): a Ref, None, or a list of Refs (empty if not modelled)."""
        rel = TYPES[rtype].rels[name]
        if rel.resolve is None:
            return [] if rel.many else None
        return rel.resolve(self.state, record)

    def _collect(
        self,
        rtype: str,
        record: Any,
        tree: IncludeTree,
        acc: dict[tuple[str, str], tuple[str, Any, IncludeTree]],
    ) -> None:
        """Every resource `tree` reaches from `record`, each with the union of the include
        subtrees it was reached by (so that a resource reached twice carries both linkages)."""
        for name, sub in tree.items():
            target = self.resolve(rtype, record, name)
            refs = target if isinstance(target, list) else [target] if target else []
            for ref_type, ref in refs:
                key = (ref_type, ref.id)
                known = acc.get(key)
                merged = _merge_trees(known[2], sub) if known else sub
                if known is not None and merged == known[2]:
                    continue
                acc[key] = (ref_type, ref, merged)
                self._collect(ref_type, ref, sub, acc)

    def resource(self, rtype: str, record: Any, tree: IncludeTree) -> dict[str, Any]:
        """One resource object, with linkage for the relationships named in `tree`."""
        attrs = _ATTRIBUTES[rtype](self.state, record)
        wanted = self.fields.get(rtype)
        if wanted is not None:
            attrs = {k: v for k, v in attrs.items() if k in wanted}
        rels: dict[str, Any] = {}
        for name in TYPES[rtype].rels:
            if wanted is not None and name not in wanted:
                continue
            rel: dict[str, Any] = {"links": self.rel_links(rtype, record.id, name)}
            if name in tree:
                target = self.resolve(rtype, record, name)
                rel["data"] = (
                    [resource_ref(t, r) for t, r in target]
                    if isinstance(target, list)
                    else (resource_ref(*target) if target else None)
                )
            rels[name] = rel
        out: dict[str, Any] = {
            "id": record.id,
            "type": rtype,
            "links": self.self_link(rtype, record.id),
        }
        if wanted is None or attrs:
            out["attributes"] = attrs
        if wanted is None or rels:
            out["relationships"] = rels
        out["meta"] = dict(self.meta)
        return out

    def _included(self, primary: Sequence[Ref], tree: IncludeTree) -> list[dict[str, Any]]:
        acc: dict[tuple[str, str], tuple[str, Any, IncludeTree]] = {}
        for rtype, record in primary:
            self._collect(rtype, record, tree, acc)
        for rtype, record in primary:
            acc.pop((rtype, record.id), None)
        return [self.resource(t, r, sub) for t, r, sub in acc.values()]

    def document(self, rtype: str, record: Any, tree: IncludeTree | None = None) -> dict[str, Any]:
        """The document `GET /api/TYPE/ID?include=...` answers (and a webhook body carries)."""
        tree = tree or {}
        doc: dict[str, Any] = {"data": self.resource(rtype, record, tree)}
        included = self._included([(rtype, record)], tree)
        if included:
            doc["included"] = included
        if self.api:
            doc["meta"] = dict(self.meta)
        return doc

    def order_document(self, order: Order, include: Sequence[str] | IncludeTree = ()) -> dict[str, Any]:
        tree = include if isinstance(include, dict) else parse_include(list(include), "orders")
        return self.document("orders", order, tree)

    def list_document(
        self,
        refs: Sequence[Ref],
        tree: IncludeTree,
        *,
        record_count: int,
        page_count: int,
        links: dict[str, str],
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {"data": [self.resource(t, r, tree) for t, r in refs]}
        included = self._included(refs, tree)
        if included:
            doc["included"] = included
        meta: dict[str, Any] = {"record_count": record_count, "page_count": page_count}
        if self.api:
            meta.update(self.meta)
        doc["meta"] = meta
        doc["links"] = links
        return doc

    def destroy_document(self, rtype: str, rid: str) -> dict[str, Any]:
        data = {"id": rid, "type": rtype, "links": self.self_link(rtype, rid)}
        return {"data": {**data, "meta": dict(self.meta)}}


def _merge_trees(a: IncludeTree, b: IncludeTree) -> IncludeTree:
    out = dict(a)
    for name, sub in b.items():
        out[name] = _merge_trees(out[name], sub) if name in out else sub
    return out
