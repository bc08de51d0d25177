"""Records -> JSON:API documents shaped like Commerce Layer's.

`base` is what links start with: `""` for webhook bodies (Commerce Layer sends relative links,
`/api/orders/ID`) and the server's root URL for API answers (absolute links). Every relationship
carries `links`; `data` linkage is added only for included relationships (to-one as an object
or null, to-many as an array, with plural resource types). Order attributes never carry null:
an unset value is omitted, because the official schema declares no attribute nullable.
Included resources keep Commerce Layer's nulls (`reference: null`), as real bodies do.

Callers hold `state.lock` while rendering so that a document is a consistent snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from commercelayer_sandbox.model import (
    CARD_TYPES,
    Customer,
    EventCallback,
    LineItem,
    Market,
    Order,
    PaymentSource,
    WalletEntry,
    Webhook,
)
from commercelayer_sandbox.state import SandboxState
from commercelayer_sandbox.timeutil import iso

ORDER_RELATIONSHIPS = (
    "market",
    "customer",
    "shipping_address",
    "billing_address",
    "available_payment_methods",
    "available_customer_payment_sources",
    "available_free_skus",
    "available_free_bundles",
    "payment_method",
    "payment_source",
    "line_items",
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
    "events",
)
#: What `include=` (and a webhook's `include_resources`) may name on orders.
ORDER_INCLUDES = (
    "customer",
    "payment_source",
    "market",
    "line_items",
    "available_customer_payment_sources",
)
WALLET_INCLUDES = ("customer", "payment_source")
CUSTOMER_RELATIONSHIPS = (
    "customer_group",
    "customer_addresses",
    "customer_payment_sources",
    "customer_subscriptions",
    "orders",
    "order_subscriptions",
    "returns",
    "sku_lists",
    "attachments",
    "events",
    "tags",
)
MARKET_RELATIONSHIPS = (
    "merchant",
    "price_list",
    "inventory_model",
    "tax_calculator",
    "customer_group",
    "attachments",
)
LINE_ITEM_RELATIONSHIPS = (
    "order",
    "item",
    "line_item_options",
    "shipment_line_items",
    "stock_line_items",
    "stock_transfers",
)
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


def _money(attrs: dict[str, Any], name: str, cents: int, currency: str) -> None:
    """Add the Commerce Layer amount triple `NAME_cents`, `NAME_float`, `formatted_NAME`."""
    attrs[f"{name}_cents"] = cents
    attrs[f"{name}_float"] = cents / 100
    attrs[f"formatted_{name}"] = formatted_amount(cents, currency)


def singular(resource_type: str) -> str:
    return resource_type[:-1] if resource_type.endswith("s") else resource_type


class Renderer:
    """Renders the records of one `SandboxState` with one link base and organization id."""

    def __init__(self, state: SandboxState, *, base: str, organization_id: str) -> None:
        self.state = state
        self.base = base
        self.meta = {"mode": "test", "organization_id": organization_id}

    # -- building blocks --

    def self_link(self, rtype: str, rid: str) -> dict[str, str]:
        return {"self": f"{self.base}/api/{rtype}/{rid}"}

    def _relationships(
        self, rtype: str, rid: str, names: Iterable[str], linkage: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in names:
            rel: dict[str, Any] = {
                "links": {
                    "self": f"{self.base}/api/{rtype}/{rid}/relationships/{name}",
                    "related": f"{self.base}/api/{rtype}/{rid}/{name}",
                }
            }
            if linkage and name in linkage:
                rel["data"] = linkage[name]
            out[name] = rel
        return out

    def _resource(
        self, rtype: str, rid: str, attributes: dict[str, Any], relationships: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "id": rid,
            "type": rtype,
            "links": self.self_link(rtype, rid),
            "attributes": attributes,
            "relationships": relationships,
            "meta": dict(self.meta),
        }

    # -- orders --

    def order_document(self, order: Order, include: Sequence[str] = ()) -> dict[str, Any]:
        """The document `GET /api/orders/ID?include=...` answers (and a webhook body carries)."""
        linkage: dict[str, Any] = {}
        included: list[dict[str, Any]] = []
        for name in include:
            data, resources = self._order_include(order, name)
            linkage[name] = data
            included.extend(resources)
        data = self._resource(
            "orders",
            order.id,
            self.order_attributes(order),
            self._relationships("orders", order.id, ORDER_RELATIONSHIPS, linkage),
        )
        doc: dict[str, Any] = {"data": data}
        if included:
            doc["included"] = _unique(included)
        return doc

    def order_attributes(self, o: Order) -> dict[str, Any]:
        state = self.state
        subtotal = state.order_subtotal(o)
        total = subtotal + o.shipping_amount_cents
        currency = o.currency_code
        attrs: dict[str, Any] = {
            "number": o.number,
            "autorefresh": o.extra.get("autorefresh", True),
            "status": o.status,
            "payment_status": o.payment_status,
            "fulfillment_status": o.fulfillment_status,
            "guest": o.guest,
            "editable": o.status in ("draft", "pending", "editing"),
        }
        if o.customer_email:
            attrs["customer_email"] = o.customer_email
        attrs.update(
            {
                "language_code": o.language_code,
                "currency_code": currency,
                "tax_included": False,
                "requires_billing_info": False,
                "country_code": o.country_code,
            }
        )
        for key in (
            "shipping_country_code_lock",
            "coupon_code",
            "gift_card_code",
            "gift_card_or_coupon_code",
        ):
            if key in o.extra:
                attrs[key] = o.extra[key]
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
        items = [state.line_items[i] for i in o.line_item_ids]
        attrs["skus_count"] = sum(li.quantity for li in items if li.item_type == "skus")
        attrs["line_item_options_count"] = 0
        attrs["shipments_count"] = 1 if items else 0
        attrs["tax_calculations_count"] = 0
        source = state.payment_sources.get(o.payment_source_id or "")
        if source is not None:
            attrs["payment_source_details"] = payment_source_details(source)
        attrs["token"] = o.token
        for key in ("cart_url", "return_url", "terms_url", "privacy_url", "checkout_url"):
            if key in o.extra:
                attrs[key] = o.extra[key]
        for key in (
            "placed_at",
            "approved_at",
            "cancelled_at",
            "payment_updated_at",
            "fulfillment_updated_at",
            "archived_at",
        ):
            value = getattr(o, key)
            if value is not None:
                attrs[key] = iso(value)
        attrs["created_at"] = iso(o.created_at)
        attrs["updated_at"] = iso(o.updated_at)
        if o.reference is not None:
            attrs["reference"] = o.reference
        if o.reference_origin is not None:
            attrs["reference_origin"] = o.reference_origin
        attrs["metadata"] = o.metadata
        return attrs

    def _order_include(self, o: Order, name: str) -> tuple[Any, list[dict[str, Any]]]:
        """(linkage, included resources) for one relationship of an order."""
        state = self.state
        if name == "customer":
            customer = state.customers.get(o.customer_id or "")
            if customer is None:
                return None, []
            return _link(customer.id, "customers"), [self.customer(customer)]
        if name == "market":
            market = state.markets[o.market_id]
            return _link(market.id, "markets"), [self.market(market)]
        if name == "payment_source":
            source = state.payment_sources.get(o.payment_source_id or "")
            if source is None:
                return None, []
            return _link(source.id, source.type), [self.payment_source(source)]
        if name == "line_items":
            items = [state.line_items[i] for i in o.line_item_ids]
            return [_link(li.id, "line_items") for li in items], [
                self.line_item(li, o) for li in items
            ]
        if name == "available_customer_payment_sources":
            entries = [] if o.guest else state.wallet_of(o.customer_id)
            return (
                [_link(w.id, "customer_payment_sources") for w in entries],
                [self.wallet_entry(w) for w in entries],
            )
        raise ValueError(f"{name!r} cannot be included")

    # -- other resources --

    def customer(self, c: Customer) -> dict[str, Any]:
        """The attributes of the real order sample's included customer (no order count: it
        would cost a scan of every order per render)."""
        attrs = {
            "email": c.email,
            "status": c.status,
            "has_password": c.has_password,
            "created_at": iso(c.created_at),
            "updated_at": iso(c.updated_at),
            "reference": c.reference,
            "reference_origin": None,
            "metadata": c.metadata,
        }
        return self._resource(
            "customers", c.id, attrs, self._relationships("customers", c.id, CUSTOMER_RELATIONSHIPS)
        )

    def market(self, m: Market) -> dict[str, Any]:
        attrs = {
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
        return self._resource(
            "markets", m.id, attrs, self._relationships("markets", m.id, MARKET_RELATIONSHIPS)
        )

    def line_item(self, li: LineItem, o: Order) -> dict[str, Any]:
        cur = o.currency_code
        attrs: dict[str, Any] = {
            "sku_code": li.sku_code,
            "bundle_code": None,
            "quantity": li.quantity,
            "currency_code": cur,
        }
        _money(attrs, "unit_amount", li.unit_amount_cents, cur)
        _money(attrs, "options_amount", 0, cur)
        attrs.update(
            {
                "discount_cents": 0,
                "discount_float": 0.0,
                "formatted_discount": formatted_amount(0, cur),
            }
        )
        _money(attrs, "total_amount", li.total_amount_cents, cur)
        attrs.update(
            {
                "tax_amount_cents": 0,
                "tax_amount_float": 0.0,
                "formatted_tax_amount": formatted_amount(0, cur),
            }
        )
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
        return self._resource(
            "line_items",
            li.id,
            attrs,
            self._relationships("line_items", li.id, LINE_ITEM_RELATIONSHIPS),
        )

    def payment_source(self, ps: PaymentSource) -> dict[str, Any]:
        attrs = payment_source_attributes(ps, self.state)
        return self._resource(
            ps.type, ps.id, attrs, self._relationships(ps.type, ps.id, ("order", "payment_gateway"))
        )

    def wallet_entry(self, w: WalletEntry) -> dict[str, Any]:
        """A `customer_payment_sources` resource; its `customer` and `payment_source`
        relationships always carry linkage (the receiver matches entries to payment sources)."""
        attrs = {
            "name": w.name,
            "customer_token": w.customer_token,
            "payment_source_token": w.payment_source_token,
            "created_at": iso(w.created_at),
            "updated_at": iso(w.updated_at),
            "reference": w.reference,
            "reference_origin": None,
            "metadata": w.metadata,
        }
        linkage = {
            "customer": _link(w.customer_id, "customers"),
            "payment_source": _link(w.payment_source_id, w.payment_source_type),
        }
        rels = self._relationships(
            "customer_payment_sources",
            w.id,
            ("customer", "payment_method", "payment_source"),
            linkage,
        )
        return self._resource("customer_payment_sources", w.id, attrs, rels)

    def wallet_included(
        self, entries: Sequence[WalletEntry], include: Sequence[str]
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for w in entries:
            if "customer" in include and w.customer_id in self.state.customers:
                out.append(self.customer(self.state.customers[w.customer_id]))
            if "payment_source" in include and w.payment_source_id in self.state.payment_sources:
                out.append(self.payment_source(self.state.payment_sources[w.payment_source_id]))
        return _unique(out)

    def webhook(self, w: Webhook) -> dict[str, Any]:
        attrs = {
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
        return self._resource(
            "webhooks",
            w.id,
            attrs,
            self._relationships("webhooks", w.id, ("last_event_callbacks",)),
        )

    def event_callback(self, c: EventCallback) -> dict[str, Any]:
        attrs = {
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
        return self._resource(
            "event_callbacks",
            c.id,
            attrs,
            self._relationships("event_callbacks", c.id, ("webhook",)),
        )


def callback_payload(c: EventCallback) -> Any:
    """The body a callback carried, decoded (the `payload` attribute is an object)."""
    return json.loads(c.body)


def _link(rid: str, rtype: str) -> dict[str, str]:
    return {"type": rtype, "id": rid}


def _unique(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for r in resources:
        key = (r["type"], r["id"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def payment_source_details(ps: PaymentSource) -> dict[str, Any]:
    """The order's `payment_source_details` attribute (`{"type": "wire_transfer"}` in samples)."""
    details: dict[str, Any] = {"type": singular(ps.type)}
    if ps.type == "stripe_payments":
        details.update(
            {
                "payment_method_id": ps.payment_source_token,
                "payment_method_type": "card",
                "payment_method_details": {
                    "brand": ps.card_brand,
                    "last4": ps.card_last4,
                    "exp_month": ps.card_exp_month,
                    "exp_year": ps.card_exp_year,
                },
            }
        )
    return details


def payment_instrument(ps: PaymentSource) -> dict[str, Any]:
    if ps.type in CARD_TYPES:
        return {
            "issuer_type": "card",
            "card_type": ps.card_brand,
            "card_last_digits": ps.card_last4,
            "card_expiry_month": str(ps.card_exp_month),
            "card_expiry_year": str(ps.card_exp_year),
        }
    return {"issuer_type": singular(ps.type).removesuffix("_payment")}


def payment_source_attributes(ps: PaymentSource, state: SandboxState) -> dict[str, Any]:
    """Type-specific attributes (the official schema's per-type fields), then the common ones."""
    order = state.orders.get(ps.order_id or "")
    amount = state.order_total(order) if order else 0
    currency = order.currency_code if order else "EUR"
    intent: dict[str, Any] = {}
    _money(intent, "intent_amount", amount, currency)
    token = ps.payment_source_token
    specific: dict[str, Any]
    if ps.type == "stripe_payments":
        specific = {
            "client_secret": f"pi_{ps.id}_secret_sandbox",
            "publishable_key": "pk_test_sandbox",
            "options": ps.options,
            "payment_method": {
                "id": token,
                "type": "card",
                "card": {
                    "brand": ps.card_brand,
                    "last4": ps.card_last4,
                    "exp_month": ps.card_exp_month,
                    "exp_year": ps.card_exp_year,
                },
            },
            "mismatched_amounts": False,
            **intent,
        }
    elif ps.type == "adyen_payments":
        specific = {
            "public_key": "sandbox_adyen_public_key",
            "payment_methods": {},
            "payment_request_data": {"payment_method": {"type": "scheme"}},
            "payment_request_details": {},
            "payment_response": {"resultCode": "Authorised", "pspReference": token},
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
            "payment_method_nonce": f"nonce-{ps.id}",
            "payment_id": token,
            "local": False,
            "options": ps.options,
        }
    elif ps.type == "checkout_com_payments":
        specific = {
            "public_key": "pk_sbox_sandbox",
            "payment_type": "token",
            "token": f"tok_{ps.id}",
            "customer_token": ps.customer_token,
            "source_id": token,
            "payment_response": {"status": "Authorized"},
            "mismatched_amounts": False,
        }
    elif ps.type == "external_payments":
        specific = {"payment_source_token": token, "options": ps.options}
    elif ps.type == "klarna_payments":
        specific = {
            "session_id": f"klarna-session-{ps.id}",
            "client_token": "sandbox_klarna_client_token",
            "payment_methods": [],
            "auth_token": token,
            "mismatched_amounts": False,
            **intent,
        }
    elif ps.type == "paypal_payments":
        specific = {
            "return_url": "https://example.com/checkout/return",
            "cancel_url": "https://example.com/checkout/cancel",
            "note_to_payer": "",
            "paypal_payer_id": ps.customer_token,
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


def list_document(
    data: list[dict[str, Any]],
    *,
    record_count: int,
    page_count: int,
    links: dict[str, str],
    included: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"data": data}
    if included:
        doc["included"] = included
    doc["meta"] = {"record_count": record_count, "page_count": page_count}
    doc["links"] = links
    return doc
