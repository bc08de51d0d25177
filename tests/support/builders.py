"""Builders for realistic Commerce Layer order webhook bodies (compact JSON:API with included)."""

from __future__ import annotations

import json
from typing import Any

# Commerce Layer's payment source types with a documented wallet ("reusing the payment source")
# flow, and those without: the tests' own copy, independent of the service's, so that a wrong
# list in the service shows up as a failing test.
WALLET_TYPES = (
    "adyen_payments",
    "axerve_payments",
    "braintree_payments",
    "checkout_com_payments",
    "external_payments",
    "klarna_payments",
    "stripe_payments",
)
NO_WALLET_TYPES = ("paypal_payments", "satispay_payments", "wire_transfers")


def order_document(
    order_id: str = "ordAAA1111",
    *,
    guest: bool = False,
    customer_id: str | None = "cusAAA1111",
    source_type: str | None = "stripe_payments",
    source_id: str = "psAAAA1111",
    market_code: str = "eu",
    status: str = "placed",
    total_cents: int = 12000,
    line_items: list[dict[str, Any]] | None = None,
    wallet: list[dict[str, Any]] | None = None,
    metadata: dict[str, Any] | None = None,
    pad_to: int = 0,
) -> dict[str, Any]:
    """An order as Commerce Layer sends it, with customer, payment source, market, line items."""
    rel: dict[str, Any] = {
        "market": {"links": {}, "data": {"type": "markets", "id": "mktAAA1111"}},
        "line_items": {"links": {}, "data": []},
    }
    included: list[dict[str, Any]] = [
        {"id": "mktAAA1111", "type": "markets", "attributes": {"name": "Europe", "code": market_code}},
    ]
    if customer_id:
        rel["customer"] = {"links": {}, "data": {"type": "customers", "id": customer_id}}
        included.append(
            {
                "id": customer_id,
                "type": "customers",
                "attributes": {"email": f"{customer_id}@example.com", "status": "repeat", "has_password": not guest},
            }
        )
    if source_type:
        rel["payment_source"] = {"links": {}, "data": {"type": source_type, "id": source_id}}
        included.append(
            {
                "id": source_id,
                "type": source_type,
                "attributes": {"payment_method": {"id": f"pm_{source_id}", "card": {"last4": "4242", "brand": "visa"}}},
            }
        )
    for n, li in enumerate(line_items or [{"sku_code": "SKU-1", "quantity": 1, "total_amount_cents": total_cents}]):
        li_id = f"li{order_id[:6]}{n:02d}"
        rel["line_items"]["data"].append({"type": "line_items", "id": li_id})
        included.append({"id": li_id, "type": "line_items", "attributes": li})
    if wallet is not None:
        rel["available_customer_payment_sources"] = {
            "links": {},
            "data": [{"type": "customer_payment_sources", "id": w["id"]} for w in wallet],
        }
        for w in wallet:
            # `token`: the gateway token (default: the one of the source it was made from);
            # `linked = False`: the webhook's include_resources did not name
            # available_customer_payment_sources.payment_source, so the entry has links only.
            token = w.get("token", f"pm_{w['source_id']}" if w.get("source_id") else None)
            entry = {
                "id": w["id"],
                "type": "customer_payment_sources",
                "attributes": {
                    "name": w.get("name", "XXXX-XXXX-XXXX-4242"),
                    "created_at": w.get("created_at", "2026-01-01T00:00:00.000Z"),
                    "payment_source_token": token,
                    "customer_token": f"cus_{customer_id}",
                },
                "relationships": {"payment_source": {"links": {}}},
            }
            if w.get("source_id") and w.get("linked", True):
                entry["relationships"]["payment_source"]["data"] = {
                    "type": w.get("source_type", "stripe_payments"),
                    "id": w["source_id"],
                }
            included.append(entry)
    attrs: dict[str, Any] = {
        "number": 1001,
        "status": status,
        "payment_status": "authorized",
        "guest": guest,
        "customer_email": f"{customer_id or 'guest'}@example.com",
        "currency_code": "EUR",
        "total_amount_cents": total_cents,
        "metadata": metadata or {},
    }
    if pad_to:
        attrs["notes"] = ""
    doc = {
        "data": {
            "id": order_id,
            "type": "orders",
            "links": {"self": f"/api/orders/{order_id}"},
            "attributes": attrs,
            "relationships": rel,
            "meta": {"mode": "test"},
        },
        "included": included,
    }
    if pad_to:
        size = len(json.dumps(doc, separators=(",", ":")))
        attrs["notes"] = "x" * max(0, pad_to - size)
    return doc


def order_body(order_id: str = "ordAAA1111", **kw: Any) -> bytes:
    return json.dumps(order_document(order_id, **kw), separators=(",", ":")).encode()
