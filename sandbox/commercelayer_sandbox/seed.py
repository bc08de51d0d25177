"""Scenarios: one TOML or JSON file describes one organization for the sandbox to hold.

Top-level keys (all optional):

- `sandbox`: configuration overrides (see `config.SandboxConfig`; nested `sender`).
- `clients`: OAuth clients `{client_id, client_secret, scope, kind? (integration, sales_channel,
  webapp: the token's application kind), application_id?}`.
- `markets`: `{id?, code, name?, number?, metadata?}`; orders refer to markets by `code`.
- `customers`: `{id?, email, has_password? (default true), guest? (true: has_password false,
  status prospect), status?, reference?, metadata?}`; orders and wallet entries refer to
  customers by `email`.
- `orders`: `{id?, number?, market?, customer? (email), customer_email?, guest?, status?,
  payment_status?, fulfillment_status?, payment_source? (a type, or a table {type, id?,
  card_last4?, card_brand?, card_exp_month?, card_exp_year?, card_fingerprint? (default: derived
  from brand, last 4 and expiry, so the same card gives the same fingerprint on every order),
  customer_token?, payment_source_token?, options? (Stripe: `setup_future_usage`, default
  "off_session"), gateway? {payment_request_data (Adyen; false: not set), recurring (Adyen: the
  account returns a recurringDetailReference; default true), payment_response_source
  (Checkout.com; default true), auth_token (Klarna; "" : not set), payment_method_nonce,
  nonce_used (Braintree)}}), card_last4?,
  card_brand?, currency_code?, language_code?, country_code?, shipping_amount_cents?,
  line_items? [{sku_code, name?, quantity?, unit_amount_cents?}], reference?, metadata?,
  created_at?, updated_at?, placed_at?}`. `guest` defaults to true for an order without a
  customer or with a guest customer.
- `customer_payment_sources`: pre-existing wallet entries `{id?, customer (email), order? (id:
  saves that order's payment source; several entries may name one order: duplicates) or
  payment_source_type + card_last4?, card_brand?, card_exp_month?, card_exp_year?, customer_token?,
  payment_source_token?, name?, created_at?}`.
- `webhooks`: `{id?, name?, topic, callback_url, include_resources?, shared_secret?, timeout?}`
  (`timeout` overrides the delivery timeout for that webhook).
- `faults`: a fault spec (see `faults.py`).
- `generate`: bulk data for benchmarks: `{orders, customers?, guest_share? (0.2),
  payment_source_types? (all), statuses? (["placed"]), seed? (0), start? (ISO time of the first
  order), interval_seconds? (60), market?}`. Ids, emails, cards and times depend on `seed` only.

Problems raise `SandboxError` with the path of the offending entry (`orders[3].customer`).
"""

from __future__ import annotations

import json
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from commercelayer_sandbox import webhooks as webhook_rules
from commercelayer_sandbox.errors import ApiError, SandboxError
from commercelayer_sandbox.model import (
    APPLICATION_KINDS,
    CARD_TYPES,
    CUSTOMER_STATUSES,
    FULFILLMENT_STATUSES,
    ORDER_STATUSES,
    PAYMENT_SOURCE_TYPES,
    PAYMENT_STATUSES,
    Customer,
    LineItem,
    Market,
    OAuthClient,
    Order,
    PaymentSource,
    WalletEntry,
)
from commercelayer_sandbox.orders import new_order_token, wallet_entry_name
from commercelayer_sandbox.state import SandboxState
from commercelayer_sandbox.timeutil import IdFactory, iso, parse_iso, short_id

TOP_KEYS = (
    "sandbox",
    "clients",
    "markets",
    "customers",
    "orders",
    "customer_payment_sources",
    "webhooks",
    "faults",
    "generate",
)
EXAMPLE = "example"
_TOKEN_PREFIXES = {
    "adyen_payments": ("shopper_", "recurring_"),
    "axerve_payments": ("axerve_shopper_", "axerve_request_"),
    "braintree_payments": ("bt_customer_", "bt_method_"),
    "checkout_com_payments": ("cus_", "src_"),
    "external_payments": ("ext_customer_", "ext_token_"),
    "klarna_payments": ("klarna_customer_", "klarna_token_"),
    "paypal_payments": ("payer_", "paypal_"),
    "satispay_payments": ("satispay_consumer_", "satispay_payment_"),
    "stripe_payments": ("cus_", "pm_"),
    "wire_transfers": ("", ""),
}
_CATALOG = (
    ("EMUG12OZFFFFFF000000XXXX", "Enamel Mug with Black Logo (12oz)", 1500),
    ("SHIRT34S000000FFFFFFLXXX", "Black Unisex 3/4 Sleeve Shirt with White Logo (L)", 9600),
    ("DRAWSBAG000000FFFFFFXXXX", "Black Drawstring Bag with White Logo", 2200),
    ("APRONXXXFFFFFF000000XXXX", "White Apron with Black Logo", 2000),
)


def example_path() -> Path:
    """The example scenario shipped with the package."""
    return Path(str(resources.files("commercelayer_sandbox") / "example-scenario.toml"))


def read_scenario(source: str | Path) -> dict[str, Any]:
    """Parse a scenario file (`.toml` or `.json`), or the bundled one for `"example"`."""
    path = example_path() if str(source) == EXAMPLE else Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SandboxError(str(path), f"cannot read the scenario: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SandboxError(str(path), f"not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise SandboxError(str(path), "a scenario is an object")
    return data


_GENERATE_KEYS = {
    "orders",
    "customers",
    "guest_share",
    "payment_source_types",
    "statuses",
    "seed",
    "start",
    "interval_seconds",
    "market",
}


@dataclass(frozen=True)
class _Generation:
    """A checked `generate` table: what to generate, from which seed."""

    orders: int
    customers: int
    guest_share: float
    types: list[str]
    statuses: list[str]
    seed: Any
    start: int
    interval: int
    market: Any


class _Records:
    """Builds single records into a state, checking each entry's fields (ids, times, choices)."""

    def __init__(self, state: SandboxState, now: int) -> None:
        self.state = state
        self.now = now
        self.counts = {
            "markets": 0,
            "customers": 0,
            "orders": 0,
            "customer_payment_sources": 0,
            "clients": 0,
            "webhooks": 0,
        }

    # -- helpers --

    def _id(self, entry: Mapping[str, Any], path: str, ids: IdFactory | None = None) -> str:
        ident = entry.get("id")
        if ident is None:
            if ids is None:
                return self.state.ids.new()
            while True:  # a generated id must not clash with a hand-written one
                ident = ids.new()
                try:
                    self.state.ids.reserve(ident)
                except ValueError:
                    continue
                return ident
        if not isinstance(ident, str) or not ident.isalnum() or len(ident) > 64:
            raise SandboxError(f"{path}.id", "must be letters and digits (at most 64)")
        try:
            self.state.ids.reserve(ident)
        except ValueError:
            raise SandboxError(f"{path}.id", f"{ident!r} is already used") from None
        return ident

    def _time(self, entry: Mapping[str, Any], key: str, path: str, default: int) -> int:
        value = entry.get(key)
        if value is None:
            return default
        if hasattr(value, "isoformat"):  # TOML datetimes
            value = value.isoformat()
        try:
            return parse_iso(str(value))
        except ValueError:
            raise SandboxError(f"{path}.{key}", f"{value!r} is not an ISO 8601 time") from None

    @staticmethod
    def _list(scenario: Mapping[str, Any], key: str) -> list[Any]:
        value = scenario.get(key, [])
        if not isinstance(value, list):
            raise SandboxError(key, "must be a list of tables")
        for n, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise SandboxError(f"{key}[{n}]", "must be a table")
        return value

    @staticmethod
    def _choice(entry: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str, path: str) -> str:
        value = entry.get(key, default)
        if value not in allowed:
            raise SandboxError(f"{path}.{key}", f"{value!r} is not one of {', '.join(allowed)}")
        return str(value)

    def _add_market(self, ident: str, code: str, m: Mapping[str, Any], path: str) -> Market:
        number = m.get("number") or self.state.next_market_number
        self.state.next_market_number = max(self.state.next_market_number, number) + 1
        market = Market(
            ident,
            number,
            str(m.get("name", code.upper())),
            code,
            self._time(m, "created_at", path, self.now),
            self._time(m, "created_at", path, self.now),
            m.get("reference"),
            dict(m.get("metadata", {})),
        )
        self.state.markets[market.id] = market
        self.counts["markets"] += 1
        return market

    def default_market(self) -> Market:
        market = next(iter(self.state.markets.values()), None)
        if market is None:
            market = self._add_market(self.state.ids.new(), "sandbox", {"name": "Sandbox"}, "markets")
        return market

    def add_order(self, o: Mapping[str, Any], path: str, ids: IdFactory | None = None) -> Order:
        state = self.state
        market = state.market_by_code(o["market"]) if "market" in o else self.default_market()
        if market is None:
            raise SandboxError(f"{path}.market", f"no market with code {o['market']!r}")
        customer = None
        if o.get("customer") is not None:
            customer = state.customer_by_email(str(o["customer"]))
            if customer is None:
                raise SandboxError(f"{path}.customer", f"no customer with email {o['customer']!r}")
        guest_default = customer is None or customer.guest
        guest = bool(o.get("guest", guest_default))
        status = self._choice(o, "status", ORDER_STATUSES, "placed", path)
        placed = status in ("placed", "approved", "cancelled")
        payment_status = self._choice(o, "payment_status", PAYMENT_STATUSES, "authorized" if placed else "unpaid", path)
        fulfillment = self._choice(o, "fulfillment_status", FULFILLMENT_STATUSES, "unfulfilled", path)
        ident = self._id(o, path, ids)
        # Without explicit times an order was created a minute ago and placed a second later,
        # so that nothing seeded lies in the future of a change made right after loading.
        created = self._time(o, "created_at", path, self.now - 60_000)
        placed_at = self._time(o, "placed_at", path, created + 1000) if placed else None
        updated = self._time(o, "updated_at", path, max(created, placed_at or 0))
        number = o.get("number") or state.next_order_number
        state.next_order_number = max(state.next_order_number, number) + 1
        currency = str(o.get("currency_code", "EUR"))
        order = Order(
            id=ident,
            number=number,
            market_id=market.id,
            customer_id=customer.id if customer else None,
            customer_email=o.get("customer_email") or (customer.email if customer else None),
            guest=guest,
            status=status,
            payment_status=payment_status,
            fulfillment_status=fulfillment,
            payment_source_id=None,
            line_item_ids=[],
            currency_code=currency,
            language_code=str(o.get("language_code", "en")),
            country_code=str(o.get("country_code", "IT" if currency == "EUR" else "US")),
            shipping_amount_cents=int(o.get("shipping_amount_cents", 700)),
            token=new_order_token(),
            created_at=created,
            updated_at=updated,
            placed_at=placed_at,
            approved_at=placed_at if status == "approved" else None,
            cancelled_at=updated if status == "cancelled" else None,
            payment_updated_at=placed_at,
            reference=o.get("reference"),
            metadata=dict(o.get("metadata", {})),
        )
        items = o.get("line_items") or [
            {
                "sku_code": _CATALOG[0][0],
                "name": _CATALOG[0][1],
                "unit_amount_cents": _CATALOG[0][2],
            }
        ]
        for k, li in enumerate(items):
            where = f"{path}.line_items[{k}]"
            if not isinstance(li, Mapping) or not li.get("sku_code"):
                raise SandboxError(where, "needs a sku_code")
            item = LineItem(
                self._id(li, where, ids),
                ident,
                str(li["sku_code"]),
                str(li.get("name", li["sku_code"])),
                int(li.get("quantity", 1)),
                int(li.get("unit_amount_cents", 1000)),
                created,
                created,
            )
            state.line_items[item.id] = item
            order.line_item_ids.append(item.id)
        source = o.get("payment_source")
        if source is not None:
            spec = {"type": source} if isinstance(source, str) else dict(source)
            for key in ("card_last4", "card_brand"):
                if key in o:
                    spec.setdefault(key, o[key])
            added = self.add_payment_source(
                spec,
                f"{path}.payment_source",
                order_id=ident,
                owner=customer.id if customer else ident,
                when=created,
                ids=ids,
            )
            order.payment_source_id = added.id
            order.payment_method_id = state.payment_method_for(market.id, added.type, currency, created)
        state.orders[order.id] = order
        self.counts["orders"] += 1
        return order

    def add_payment_source(
        self,
        spec: Mapping[str, Any],
        path: str,
        *,
        order_id: str | None,
        owner: str,
        when: int,
        ids: IdFactory | None = None,
    ) -> PaymentSource:
        ptype = spec.get("type")
        if ptype not in PAYMENT_SOURCE_TYPES:
            raise SandboxError(f"{path}.type", f"{ptype!r} is not one of {', '.join(sorted(PAYMENT_SOURCE_TYPES))}")
        ident = self._id(spec, path, ids)
        source = _payment_source(str(ptype), spec, path, ident, order_id=order_id, owner=owner, when=when)
        self.state.payment_sources[source.id] = source
        return source


def _payment_source(
    ptype: str, spec: Mapping[str, Any], path: str, ident: str, *, order_id: str | None, owner: str, when: int
) -> PaymentSource:
    """The payment source record a scenario entry describes (its type checked, its id reserved)."""
    is_card = ptype in CARD_TYPES
    last4 = str(spec.get("card_last4", "1111" if is_card else ""))
    if last4 and (len(last4) != 4 or not last4.isdigit()):
        raise SandboxError(f"{path}.card_last4", "must be 4 digits")
    customer_prefix, token_prefix = _TOKEN_PREFIXES[ptype]
    options = spec.get("options")
    if options is None:
        options = {"setup_future_usage": "off_session"} if ptype == "stripe_payments" else {}
    brand = str(spec.get("card_brand", "visa" if is_card or last4 else ""))
    exp_month = int(spec.get("card_exp_month", 12))
    exp_year = int(spec.get("card_exp_year", 2030))
    if not 1 <= exp_month <= 12:
        raise SandboxError(f"{path}.card_exp_month", "must be from 1 to 12")
    # Stripe fingerprints identify a card: the same card (brand, number, expiry) gives the
    # same fingerprint on every payment source record, whatever order it paid.
    fingerprint = str(
        spec.get("card_fingerprint")
        or (short_id("card", brand, last4, str(exp_month), str(exp_year)) if is_card else "")
    )  # fmt: skip
    gateway = spec.get("gateway", {})
    known = {
        "payment_request_data",
        "recurring",
        "payment_response_source",
        "auth_token",
        "payment_method_nonce",
        "nonce_used",
    }
    if not isinstance(gateway, Mapping) or set(gateway) - known:
        raise SandboxError(f"{path}.gateway", f"must be a table with keys among {sorted(known)}")
    gateway = dict(gateway)
    customer_token = str(spec.get("customer_token") or f"{customer_prefix}{owner}")
    if ptype == "adyen_payments":
        data = gateway.get(
            "payment_request_data",
            {"payment_method": {"type": "scheme"}, "shopperReference": customer_token},
        )
        gateway["payment_request_data"] = data or None  # false: not set
    return PaymentSource(
        id=ident,
        type=ptype,
        order_id=order_id,
        customer_token=customer_token,
        payment_source_token=str(spec.get("payment_source_token") or f"{token_prefix}{ident}"),
        card_brand=brand,
        card_last4=last4,
        card_exp_month=exp_month,
        card_exp_year=exp_year,
        created_at=when,
        updated_at=when,
        options=dict(options),
        metadata=dict(spec.get("metadata", {})),
        card_fingerprint=fingerprint,
        gateway=gateway,
    )


class _Loader(_Records):
    """Adds one scenario's records to a state, section by section (config and faults are the caller's)."""

    def clients(self, scenario: Mapping[str, Any]) -> None:
        for n, c in enumerate(self._list(scenario, "clients")):
            path = f"clients[{n}]"
            cid, secret = c.get("client_id"), c.get("client_secret")
            if not isinstance(cid, str) or not cid or not isinstance(secret, str) or not secret:
                raise SandboxError(path, "needs client_id and client_secret strings")
            kind = self._choice(c, "kind", APPLICATION_KINDS, "integration", path)
            app_id = c.get("application_id") or short_id("application", cid)
            self.state.clients[cid] = OAuthClient(cid, secret, str(c.get("scope", "market:all")), kind, str(app_id))
            self.counts["clients"] += 1

    def markets(self, scenario: Mapping[str, Any]) -> None:
        for n, m in enumerate(self._list(scenario, "markets")):
            path = f"markets[{n}]"
            code = m.get("code")
            if not isinstance(code, str) or not code:
                raise SandboxError(f"{path}.code", "is required")
            if self.state.market_by_code(code):
                raise SandboxError(f"{path}.code", f"{code!r} is already used")
            self._add_market(self._id(m, path), code, m, path)

    def customers(self, scenario: Mapping[str, Any]) -> None:
        for n, c in enumerate(self._list(scenario, "customers")):
            path = f"customers[{n}]"
            email = c.get("email")
            if not isinstance(email, str) or "@" not in email:
                raise SandboxError(f"{path}.email", "must be an email address")
            if self.state.customer_by_email(email):
                raise SandboxError(f"{path}.email", f"{email!r} is already used")
            guest = bool(c.get("guest", False))
            has_password = bool(c.get("has_password", not guest))
            status = self._choice(c, "status", CUSTOMER_STATUSES, "prospect" if guest else "acquired", path)
            when = self._time(c, "created_at", path, self.now)
            customer = Customer(
                self._id(c, path),
                email,
                has_password,
                status,
                when,
                when,
                c.get("reference"),
                dict(c.get("metadata", {})),
                guest=guest,
            )
            self.state.customers[customer.id] = customer
            self.counts["customers"] += 1

    def orders(self, scenario: Mapping[str, Any]) -> None:
        for n, o in enumerate(self._list(scenario, "orders")):
            self.add_order(o, f"orders[{n}]")

    def wallet(self, scenario: Mapping[str, Any]) -> None:
        state = self.state
        for n, w in enumerate(self._list(scenario, "customer_payment_sources")):
            path = f"customer_payment_sources[{n}]"
            customer = state.customer_by_email(str(w.get("customer", "")))
            if customer is None:
                raise SandboxError(f"{path}.customer", f"no customer with email {w.get('customer')!r}")
            when = self._time(w, "created_at", path, self.now)
            if "order" in w:
                order = state.orders.get(str(w["order"]))
                if order is None or order.payment_source_id is None:
                    raise SandboxError(f"{path}.order", f"no order {w['order']!r} with a payment source")
                source = state.payment_sources[order.payment_source_id]
            else:
                spec = {
                    "type": w.get("payment_source_type"),
                    **{
                        k: w[k]
                        for k in (
                            "card_last4",
                            "card_brand",
                            "card_exp_month",
                            "card_exp_year",
                            "customer_token",
                            "payment_source_token",
                        )
                        if k in w
                    },
                }
                source = self.add_payment_source(spec, path, order_id=None, owner=customer.id, when=when)
            market = self.default_market()
            currency = "EUR"
            if source.order_id in state.orders:
                origin = state.orders[source.order_id]
                market, currency = state.markets[origin.market_id], origin.currency_code
            entry = WalletEntry(
                id=self._id(w, path),
                payment_method_id=state.payment_method_for(market.id, source.type, currency, when),
                customer_id=customer.id,
                payment_source_id=source.id,
                payment_source_type=source.type,
                name=str(w.get("name") or wallet_entry_name(source.card_last4, source.type)),
                customer_token=str(w.get("customer_token") or source.customer_token),
                payment_source_token=str(w.get("payment_source_token") or source.payment_source_token),
                created_at=when,
                updated_at=when,
                reference=w.get("reference"),
                metadata=dict(w.get("metadata", {})),
            )
            state.wallet[entry.id] = entry
            self.counts["customer_payment_sources"] += 1

    def webhooks(self, scenario: Mapping[str, Any]) -> dict[str, float]:
        """Create the webhooks; returns their timeout overrides by webhook id."""
        timeouts = {}
        for n, h in enumerate(self._list(scenario, "webhooks")):
            path = f"webhooks[{n}]"
            unknown = set(h) - {
                "id",
                "name",
                "topic",
                "callback_url",
                "include_resources",
                "shared_secret",
                "timeout",
                "reference",
                "metadata",
            }
            if unknown:
                raise SandboxError(path, f"unknown keys {sorted(unknown)}")
            if not isinstance(h.get("topic"), str) or not isinstance(h.get("callback_url"), str):
                raise SandboxError(path, "needs topic and callback_url strings")
            ident = self._id(h, path)
            self.state.ids.release(ident)  # webhook_rules.create reserves it again
            try:
                hook = webhook_rules.create(
                    self.state, h, now=self.now, ident=ident, shared_secret=h.get("shared_secret")
                )
            except ApiError as exc:
                raise SandboxError(path, "; ".join(e["detail"] for e in exc.errors)) from None
            if h.get("timeout") is not None:
                timeouts[hook.id] = float(h["timeout"])
            self.counts["webhooks"] += 1
        return timeouts

    def generate(self, spec: Any) -> None:
        """Bulk orders with customers, deterministic given `seed`."""
        plan = self._generation(spec)
        rng = random.Random(f"sandbox-generate:{plan.seed}")  # noqa: S311 - reproducible test data
        ids = IdFactory(f"sandbox-generate-ids:{plan.seed}")
        registered = [
            self._generated_customer(f"customer-{plan.seed}-{i:05d}@example.com", plan.start, ids)
            for i in range(plan.customers)
        ]
        for i in range(plan.orders):
            self.add_order(self._generated_order(plan, i, rng, ids, registered), f"generate.orders[{i}]", ids)

    def _generation(self, spec: Any) -> _Generation:
        """The `generate` table, checked."""
        if not isinstance(spec, Mapping):
            raise SandboxError("generate", "must be a table")
        unknown = set(spec) - _GENERATE_KEYS
        if unknown:
            raise SandboxError(
                "generate", f"unknown keys {sorted(unknown)} (known: {', '.join(sorted(_GENERATE_KEYS))})"
            )
        count = spec.get("orders", 0)
        if not isinstance(count, int) or count < 0:
            raise SandboxError("generate.orders", "must be a non-negative integer")
        guest_share = float(spec.get("guest_share", 0.2))
        if not 0 <= guest_share <= 1:
            raise SandboxError("generate.guest_share", "must be from 0 to 1")
        types = list(spec.get("payment_source_types", sorted(PAYMENT_SOURCE_TYPES)))
        bad = [t for t in types if t not in PAYMENT_SOURCE_TYPES]
        if bad or not types:
            raise SandboxError("generate.payment_source_types", f"unknown types {bad}" if bad else "is empty")
        statuses = list(spec.get("statuses", ["placed"]))
        if not statuses or any(s not in ORDER_STATUSES for s in statuses):
            raise SandboxError("generate.statuses", f"must be some of {', '.join(ORDER_STATUSES)}")
        n_customers = spec.get("customers", max(1, count // 2))
        if not isinstance(n_customers, int) or n_customers < 1:
            raise SandboxError("generate.customers", "must be a positive integer")
        return _Generation(
            orders=count,
            customers=n_customers,
            guest_share=guest_share,
            types=types,
            statuses=statuses,
            seed=spec.get("seed", 0),
            start=self._time(spec, "start", "generate", parse_iso("2024-01-01T00:00:00Z")),
            interval=int(float(spec.get("interval_seconds", 60)) * 1000),
            market=spec.get("market"),
        )

    def _generated_customer(self, email: str, when: int, ids: IdFactory, *, guest: bool = False) -> Customer:
        if not guest and self.state.customer_by_email(email):
            raise SandboxError("generate", f"customer {email} already exists (generate twice with one seed?)")
        if guest:
            c = Customer(self._id({}, "generate", ids), email, False, "prospect", when, when, guest=True)
        else:
            c = Customer(self._id({}, "generate", ids), email, True, "acquired", when, when)
        self.state.customers[c.id] = c
        self.counts["customers"] += 1
        return c

    def _generated_order(
        self, plan: _Generation, i: int, rng: random.Random, ids: IdFactory, registered: list[Customer]
    ) -> dict[str, Any]:
        """The `i`th generated order's entry (a guest one brings its own customer)."""
        guest = rng.random() < plan.guest_share
        ptype = rng.choice(plan.types)
        when = plan.start + i * plan.interval
        if guest:
            c = self._generated_customer(f"guest-{plan.seed}-{i:05d}@example.com", when, ids, guest=True)
        else:
            c = registered[rng.randrange(len(registered))]
        lines = [
            {
                "sku_code": sku,
                "name": name,
                "quantity": rng.randint(1, 3),
                "unit_amount_cents": cents,
            }
            for sku, name, cents in rng.sample(_CATALOG, rng.randint(1, 3))
        ]
        order = {
            "customer": c.email,
            "guest": guest,
            "status": rng.choice(plan.statuses),
            "payment_source": {
                "type": ptype,
                "card_last4": f"{rng.randrange(10000):04d}" if ptype in CARD_TYPES else "",
            },
            "line_items": lines,
            "created_at": iso(when),
            "metadata": {"sandbox_generated": True},
        }
        if plan.market:
            order["market"] = plan.market
        return order


def load_records(
    state: SandboxState, scenario: Mapping[str, Any], *, now: int
) -> tuple[dict[str, int], dict[str, float]]:
    """Add a scenario's records to `state` (under its lock); (counts, webhook timeouts)."""
    unknown = set(scenario) - set(TOP_KEYS)
    if unknown:
        raise SandboxError("", f"unknown top-level keys {sorted(unknown)} (known: {', '.join(TOP_KEYS)})")
    loader = _Loader(state, now)
    with state.lock:
        loader.clients(scenario)
        loader.markets(scenario)
        loader.customers(scenario)
        loader.orders(scenario)
        if "generate" in scenario:
            loader.generate(scenario["generate"])
        loader.wallet(scenario)
        timeouts = loader.webhooks(scenario)
    return loader.counts, timeouts
