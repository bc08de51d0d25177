"""The sandbox's in-memory organization: every record, behind one re-entrant lock.

`SandboxState` is a store with lookups; it knows no HTTP. Callers that read several records to
build one answer hold `state.lock` for the whole read so that answers are consistent snapshots.
Business rules live elsewhere (`orders.py`, `webhooks.py`, `seed.py`).
"""

from __future__ import annotations

import copy
import hmac
import threading
from typing import Any

from commercelayer_sandbox.errors import not_found
from commercelayer_sandbox.model import (
    Customer,
    Event,
    EventCallback,
    LineItem,
    Market,
    OAuthClient,
    Order,
    PaymentMethod,
    PaymentSource,
    Token,
    WalletEntry,
    Webhook,
)
from commercelayer_sandbox.timeutil import IdFactory, iso, short_id


class SandboxState:
    """Markets, customers, orders, wallets, OAuth clients and tokens, webhooks and their calls."""

    def __init__(self, *, id_seed: int | str | None = None) -> None:
        self.lock = threading.RLock()
        self._id_seed = id_seed
        self.clear()

    def clear(self) -> None:
        with self.lock:
            self.ids = IdFactory(self._id_seed)
            self.markets: dict[str, Market] = {}
            self.customers: dict[str, Customer] = {}
            self.payment_sources: dict[str, PaymentSource] = {}
            self.payment_methods: dict[str, PaymentMethod] = {}
            self.line_items: dict[str, LineItem] = {}
            self.orders: dict[str, Order] = {}
            self.wallet: dict[str, WalletEntry] = {}
            self.clients: dict[str, OAuthClient] = {}
            self.tokens: dict[str, Token] = {}
            self.webhooks: dict[str, Webhook] = {}
            self.callbacks: list[EventCallback] = []
            self.events: dict[str, Event] = {}
            self.next_order_number = 10_000_001
            self.next_market_number = 1001

    _DATA = (
        "markets",
        "customers",
        "payment_sources",
        "payment_methods",
        "line_items",
        "orders",
        "wallet",
        "clients",
        "tokens",
        "webhooks",
        "callbacks",
        "events",
        "next_order_number",
        "next_market_number",
    )

    def copy(self) -> SandboxState:
        """A deep copy of the records (to try a change and adopt it only if it succeeds)."""
        twin = SandboxState(id_seed=self._id_seed)
        with self.lock:
            twin.ids = self.ids.clone()
            for name in self._DATA:
                setattr(twin, name, copy.deepcopy(getattr(self, name)))
        return twin

    def adopt(self, other: SandboxState) -> None:
        """Take over `other`'s records (this object, and its lock, stay the ones others hold)."""
        with self.lock:
            self.ids = other.ids
            for name in self._DATA:
                setattr(self, name, getattr(other, name))

    # -- lookups (raise a 404 ApiError when asked for something that does not exist) --

    def order(self, ident: str) -> Order:
        try:
            return self.orders[ident]
        except KeyError:
            raise not_found("orders", ident) from None

    def customer(self, ident: str) -> Customer:
        try:
            return self.customers[ident]
        except KeyError:
            raise not_found("customers", ident) from None

    def webhook(self, ident: str) -> Webhook:
        try:
            return self.webhooks[ident]
        except KeyError:
            raise not_found("webhooks", ident) from None

    def customer_by_email(self, email: str) -> Customer | None:
        wanted = email.strip().lower()
        return next((c for c in self.customers.values() if c.email.lower() == wanted), None)

    def market_by_code(self, code: str) -> Market | None:
        return next((m for m in self.markets.values() if m.code == code), None)

    def wallet_of(self, customer_id: str | None) -> list[WalletEntry]:
        """A customer's wallet entries, oldest first."""
        if customer_id is None:
            return []
        return sorted(
            (w for w in self.wallet.values() if w.customer_id == customer_id),
            key=lambda w: (w.created_at, w.id),
        )

    def webhooks_for(self, topic: str) -> list[Webhook]:
        return sorted((w for w in self.webhooks.values() if w.topic == topic), key=lambda w: w.id)

    def callbacks_for(self, webhook_id: str) -> list[EventCallback]:
        """A webhook's event callbacks, newest first."""
        return [c for c in reversed(self.callbacks) if c.webhook_id == webhook_id]

    # -- OAuth --

    def check_client(self, client_id: str, client_secret: str) -> OAuthClient | None:
        """The client if both credentials match (constant-time comparison), else None."""
        client = self.clients.get(client_id)
        given = client_secret.encode()
        expected = client.client_secret.encode() if client else b"\x00" * max(len(given), 1)
        if hmac.compare_digest(given, expected) and client is not None:
            return client
        return None

    def issue_token(
        self,
        client: OAuthClient,
        scope: str,
        *,
        value: str,
        now: float,
        expires_at: float,
        claims: dict[str, Any],
    ) -> Token:
        token = Token(value, client.client_id, scope, now, expires_at, claims)
        with self.lock:
            self.tokens[token.value] = token
        return token

    def payment_method_for(self, market_id: str, ptype: str, currency: str, now: int) -> str:
        """The id of the market's payment method for `ptype` (made on first use; its id is
        derived from market, type and currency, so it never shifts generated ids)."""
        ident = short_id("payment_method", market_id, ptype, currency)
        with self.lock:
            if ident not in self.payment_methods:
                name = ptype.replace("_", " ").removesuffix("s").title()
                self.payment_methods[ident] = PaymentMethod(ident, market_id, ptype, name, currency, now, now)
        return ident

    def valid_token(self, value: str, *, now: float) -> Token | None:
        with self.lock:
            token = self.tokens.get(value)
        if token is None or token.expires_at <= now:
            return None
        return token

    def expire_tokens(self, *, now: float) -> int:
        """Make every live token expire now; the number of tokens that were still live."""
        with self.lock:
            live = [t for t in self.tokens.values() if t.expires_at > now]
            for t in live:
                t.expires_at = now
        return len(live)

    # -- the control API's view --

    def snapshot(self) -> dict[str, Any]:
        """Orders, customers, wallet entries, markets and webhooks as plain JSON."""
        with self.lock:
            return {
                "markets": [
                    {"id": m.id, "code": m.code, "name": m.name, "number": m.number} for m in self.markets.values()
                ],
                "customers": [
                    {
                        "id": c.id,
                        "email": c.email,
                        "has_password": c.has_password,
                        "status": c.status,
                        "metadata": c.metadata,
                    }
                    for c in self.customers.values()
                ],
                "orders": [self.order_summary(o) for o in self.orders.values()],
                "customer_payment_sources": [
                    {
                        "id": w.id,
                        "customer_id": w.customer_id,
                        "name": w.name,
                        "payment_source": {
                            "type": w.payment_source_type,
                            "id": w.payment_source_id,
                        },
                        "customer_token": w.customer_token,
                        "payment_source_token": w.payment_source_token,
                        "origin_order_id": w.origin_order_id,
                        "created_at": iso(w.created_at),
                    }
                    for w in sorted(self.wallet.values(), key=lambda w: (w.created_at, w.id))
                ],
                "webhooks": [
                    {
                        "id": w.id,
                        "name": w.name,
                        "topic": w.topic,
                        "callback_url": w.callback_url,
                        "include_resources": w.include_resources,
                        "circuit_state": w.circuit_state,
                        "circuit_failure_count": w.circuit_failure_count,
                    }
                    for w in self.webhooks.values()
                ],
                "clients": sorted(self.clients),
            }

    def order_summary(self, o: Order) -> dict[str, Any]:
        source = self.payment_sources.get(o.payment_source_id or "")
        return {
            "id": o.id,
            "number": o.number,
            "status": o.status,
            "payment_status": o.payment_status,
            "fulfillment_status": o.fulfillment_status,
            "guest": o.guest,
            "customer_id": o.customer_id,
            "customer_email": o.customer_email,
            "market_id": o.market_id,
            "payment_source": {
                "type": source.type,
                "id": source.id,
                "card_last4": source.card_last4,
            }
            if source
            else None,
            "total_amount_cents": self.order_total(o),
            "currency_code": o.currency_code,
            "created_at": iso(o.created_at),
            "updated_at": iso(o.updated_at),
            "placed_at": iso(o.placed_at) if o.placed_at is not None else None,
            "metadata": o.metadata,
        }

    def order_subtotal(self, o: Order) -> int:
        return sum(self.line_items[i].total_amount_cents for i in o.line_item_ids)

    def order_total(self, o: Order) -> int:
        return self.order_subtotal(o) + o.shipping_amount_cents
