"""What orders do: PATCH semantics (wallet and status triggers), status transitions, listing.

`apply_patch` works on a copy of the order and commits only when every part of the body was
accepted, so a 422 leaves the organization unchanged. Parts are applied in this order: plain
attributes, `customer_email`/`customer_password`, `_nullify_payment_source`,
`_customer_payment_source_id`, `_save_payment_source_to_customer_wallet`, status triggers
(`_place`, `_approve`, `_cancel`, `_authorize`, `_capture`, `_approve_and_capture`, `_refund`),
`_archive`/`_unarchive`. Status triggers fire the matching webhook topic, as in Commerce Layer.

Wallet rules (Commerce Layer documents the triggers, not every edge; the sandbox's choices):
- saving needs a non-guest order with a customer and a payment source of a type with a wallet
  flow (`model.WALLET_TYPES`); otherwise 422 with `meta.error` `guest`, `no_customer`,
  `no_payment_source` or `no_wallet_flow`;
- a save the gateway cannot honour (`gateway_refusal`: Braintree nonce already used by placing
  the order, Adyen without `payment_request_data` or `recurringDetailReference`, Checkout.com
  without `payment_response.source`, Klarna without `auth_token`, Stripe without
  `setup_future_usage: off_session`) is a 422 VALIDATION_ERROR (`meta.error` names the reason)
  or, with `wallet_save_refusal = "no_entry"`, a 200 without a new entry;
- every accepted save creates a new `customer_payment_sources` record, even when the same
  payment source was saved before (Commerce Layer does not document deduplication; the sandbox
  makes a double save visible as a duplicate, counted in the stats);
- `_customer_payment_source_id` gives the order a payment source record of its own, made from
  the entry: same type, the entry's `customer_token` and `payment_source_token`, the card
  details (brand, last 4, expiry, fingerprint) of the record the entry was saved from, a new id
  and `wallet_entry_id` pointing back at the entry. A payment source record belongs to one
  order (its amounts are that order's); only when the entry was saved from this very order is
  its own record reused. An unknown id, or an entry of another customer, is a 422 on that
  attribute.
"""

from __future__ import annotations

import copy
import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from commercelayer_sandbox.errors import ApiError, validation_error
from commercelayer_sandbox.model import WALLET_TYPES, Customer, Order, PaymentSource, WalletEntry
from commercelayer_sandbox.render import singular
from commercelayer_sandbox.state import SandboxState
from commercelayer_sandbox.timeutil import parse_iso_micros

#: Commerce Layer's order topics: the `orders.*` ones its dashboard lets an operator subscribe to
#: (commercelayer/dashboard-apps, apps/webhooks/src/data/events.ts). webhook-app ships the same
#: list (tests/test_events.py checks that the two agree).
ORDER_TOPICS = (
    "orders.approve",
    "orders.authorize",
    "orders.cancel",
    "orders.cancel_fulfilling",
    "orders.cancel_subscriptions",
    "orders.create",
    "orders.create_subscriptions",
    "orders.destroy",
    "orders.draft",
    "orders.fulfill",
    "orders.pay",
    "orders.pending",
    "orders.place",
    "orders.placing",
    "orders.rebuild_shipments",
    "orders.refund",
    "orders.start_editing",
    "orders.start_fulfilling",
    "orders.stop_editing",
    "orders.tagged",
    "orders.tax_calculation_failed",
    "orders.void",
)
#: Writable attributes that are stored and echoed, nothing more.
STORED = (
    "autorefresh",
    "shipping_country_code_lock",
    "coupon_code",
    "gift_card_code",
    "gift_card_or_coupon_code",
    "cart_url",
    "return_url",
    "terms_url",
    "privacy_url",
)
#: Triggers accepted without effect: the sandbox models no addresses, taxes or invoices.
NO_OPS = (
    "_refresh",
    "_validate",
    "_update_taxes",
    "_billing_address_clone_id",
    "_shipping_address_clone_id",
    "_shipping_address_same_as_billing",
    "_billing_address_same_as_shipping",
    "_commit_invoice",
    "_refund_invoice",
    "_save_shipping_address_to_customer_address_book",
    "_save_billing_address_to_customer_address_book",
    "_authorization_amount_cents",
)
STATUS_TRIGGERS: dict[str, tuple[str, ...]] = {
    "_place": ("orders.place",),
    "_approve": ("orders.approve",),
    "_approve_and_capture": ("orders.approve", "orders.pay"),
    "_authorize": ("orders.authorize",),
    "_capture": ("orders.pay",),
    "_cancel": ("orders.cancel",),
    "_refund": ("orders.refund",),
}
#: Which orders a PATCH trigger may move (status triggers fired through the control API's
#: `transition` skip these checks).
_ALLOWED: dict[str, Callable[[Order], bool]] = {
    "orders.place": lambda o: o.status in ("draft", "pending"),
    "orders.approve": lambda o: o.status == "placed",
    "orders.cancel": lambda o: o.status in ("placed", "approved") and o.fulfillment_status != "fulfilled",
    "orders.authorize": lambda o: o.payment_status == "unpaid",
    "orders.pay": lambda o: o.payment_status == "authorized",
    "orders.refund": lambda o: o.payment_status in ("paid", "partially_paid"),
}


def _set_status(status: str, stamp: str | None = None) -> Callable[[Order, int], None]:
    def apply(o: Order, now: int) -> None:
        o.status = status
        if stamp:
            setattr(o, stamp, now)

    return apply


def _set_payment(status: str) -> Callable[[Order, int], None]:
    def apply(o: Order, now: int) -> None:
        o.payment_status = status
        o.payment_updated_at = now

    return apply


def _set_fulfillment(status: str) -> Callable[[Order, int], None]:
    def apply(o: Order, now: int) -> None:
        o.fulfillment_status = status
        o.fulfillment_updated_at = now

    return apply


def _cancel(o: Order, now: int) -> None:
    o.status = "cancelled"
    o.cancelled_at = now
    if o.payment_status == "authorized":
        o.payment_status = "voided"
        o.payment_updated_at = now


TRANSITIONS: dict[str, Callable[[Order, int], None]] = {
    "orders.draft": _set_status("draft"),
    "orders.pending": _set_status("pending"),
    "orders.placing": _set_status("placing"),
    "orders.place": _set_status("placed", "placed_at"),
    # `_start_editing` edits a placed order; `_stop_editing` returns it to placed (resources.json).
    "orders.start_editing": _set_status("editing"),
    "orders.stop_editing": _set_status("placed"),
    "orders.approve": _set_status("approved", "approved_at"),
    "orders.cancel": _cancel,
    "orders.authorize": _set_payment("authorized"),
    "orders.void": _set_payment("voided"),
    "orders.pay": _set_payment("paid"),
    "orders.refund": _set_payment("refunded"),
    "orders.start_fulfilling": _set_fulfillment("in_progress"),
    "orders.cancel_fulfilling": _set_fulfillment("unfulfilled"),
    "orders.fulfill": _set_fulfillment("fulfilled"),
}


def apply_transition(order: Order, topic: str, now: int) -> bool:
    """Move `order` as `topic` implies (placed, placed_at...); False if the topic moves nothing."""
    change = TRANSITIONS.get(topic)
    if change is None:
        return False
    change(order, now)
    order.updated_at = now
    return True


def wallet_entry_name(last4: str, source_type: str) -> str:
    """`XXXX-XXXX-XXXX-1111` from the card's last 4 digits (the payment source type without one)."""
    return f"XXXX-XXXX-XXXX-{last4}" if last4 else singular(source_type)


@dataclass
class PatchOutcome:
    order: Order
    topics: list[str] = field(default_factory=list)
    created: list[WalletEntry] = field(default_factory=list)
    duplicates: int = 0
    used_entry: WalletEntry | None = None
    new_sources: list[PaymentSource] = field(default_factory=list)
    #: Why the gateway refused a save that was answered 200 without an entry (`no_entry`).
    refused_without_entry: str | None = None


@dataclass
class _Patch:
    """One PATCH in progress: the body, the draft it changes, and what it will commit."""

    state: SandboxState
    attributes: Mapping[str, Any]
    now: int
    gateway_refusal: str
    outcome: PatchOutcome
    expired_card: str = "place"
    new_customers: list[Customer] = field(default_factory=list)
    customer_changes: dict[str, Customer] = field(default_factory=dict)

    @property
    def draft(self) -> Order:
        return self.outcome.order


def _plain_attributes(p: _Patch) -> None:
    for key in STORED:
        if key in p.attributes:
            p.draft.extra[key] = p.attributes[key]
    for key in ("guest", "language_code", "reference", "reference_origin", "metadata"):
        if key in p.attributes:
            setattr(p.draft, key, p.attributes[key])


def _customer_email(p: _Patch) -> None:
    if "customer_email" in p.attributes:
        _associate_customer(p.state, p.draft, p.attributes["customer_email"], p.now, p.new_customers)


def _customer_password(p: _Patch) -> None:
    if not p.attributes.get("customer_password"):
        return
    draft = p.draft
    customer = next((c for c in p.new_customers if c.id == draft.customer_id), None) or copy.deepcopy(
        p.state.customers.get(draft.customer_id or "")
    )
    if customer is None:
        raise validation_error(
            "the order has no customer to sign up",
            pointer="/data/attributes/customer_password",
            error="no_customer",
        )
    customer.has_password = True
    customer.updated_at = p.now
    p.customer_changes[customer.id] = customer


def _nullify_payment_source(p: _Patch) -> None:
    if p.attributes.get("_nullify_payment_source"):
        p.draft.payment_source_id = None


def _use_wallet(p: _Patch) -> None:
    if "_customer_payment_source_id" in p.attributes:
        p.outcome.used_entry = _use_wallet_entry(
            p.state, p.draft, p.attributes["_customer_payment_source_id"], p.now, p.outcome
        )
        if p.expired_card == "use":
            _refuse_expired_card(p, "_customer_payment_source_id")


def _save_wallet(p: _Patch) -> None:
    if not p.attributes.get("_save_payment_source_to_customer_wallet"):
        return
    entry = _save_to_wallet(p.state, p.draft, p.now, p.outcome, p.gateway_refusal)
    if entry is not None:
        if any(w.payment_source_id == entry.payment_source_id for w in p.state.wallet.values()):
            p.outcome.duplicates += 1
        p.outcome.created.append(entry)


def _status_triggers(p: _Patch) -> None:
    draft = p.draft
    for trigger, topics in STATUS_TRIGGERS.items():
        if not p.attributes.get(trigger):
            continue
        if p.expired_card == "place" and trigger in _CHARGING_TRIGGERS:
            _refuse_expired_card(p, trigger)
        for topic in topics:
            if not _ALLOWED[topic](draft):
                raise validation_error(
                    f"{trigger} is not allowed on an order with status {draft.status!r} and "
                    f"payment_status {draft.payment_status!r}",
                    pointer=f"/data/attributes/{trigger}",
                    error="invalid_transition",
                )
            apply_transition(draft, topic, p.now)
            p.outcome.topics.append(topic)


#: The triggers that ask the gateway to charge the order's payment source.
_CHARGING_TRIGGERS = ("_place", "_authorize", "_approve_and_capture")


def card_expired(source: PaymentSource, now_ms: int) -> bool:
    """A card is good until the end of its expiry month (UTC)."""
    if not source.card_last4:
        return False
    today = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    return (source.card_exp_year, source.card_exp_month) < (today.year, today.month)


def _refuse_expired_card(p: _Patch, attribute: str) -> None:
    """FACTS: "a saved card that has expired fails when it is reused". The order's payment source,
    when made from a wallet entry whose card has expired, is refused with a 422 on `attribute`."""
    sid = p.draft.payment_source_id
    source = next((s for s in p.outcome.new_sources if s.id == sid), None) or p.state.payment_sources.get(sid or "")
    if source is None or source.wallet_entry_id is None or not card_expired(source, p.now):
        return
    raise validation_error(
        f"the saved card ({source.card_brand or 'card'} ending in {source.card_last4}) expired "
        f"{source.card_exp_month:02d}/{source.card_exp_year}",
        pointer=f"/data/attributes/{attribute}",
        error="card_expired",
    )


def _archive(p: _Patch) -> None:
    if p.attributes.get("_archive"):
        p.draft.archived_at = p.now
    if p.attributes.get("_unarchive"):
        p.draft.archived_at = None


#: The parts of a PATCH, in the order they apply (the module docstring's order).
_PATCH_STEPS: tuple[Callable[[_Patch], None], ...] = (
    _plain_attributes,
    _customer_email,
    _customer_password,
    _nullify_payment_source,
    _use_wallet,
    _save_wallet,
    _status_triggers,
    _archive,
)


def _commit(p: _Patch, order_id: str, original: Order) -> None:
    """Store the draft and everything the PATCH created (only once every step accepted it)."""
    state, draft, outcome = p.state, p.draft, p.outcome
    if draft != original or outcome.created or p.new_customers or p.customer_changes:
        draft.updated_at = p.now
    state.orders[order_id] = draft
    for c in p.new_customers:
        state.customers[c.id] = c
    state.customers.update(p.customer_changes)
    for source in outcome.new_sources:
        state.payment_sources[source.id] = source
    for entry in outcome.created:
        state.wallet[entry.id] = entry


def apply_patch(
    state: SandboxState,
    order_id: str,
    attributes: Mapping[str, Any],
    *,
    now: int,
    gateway_refusal: str = "error",
    expired_card: str = "place",
) -> PatchOutcome:
    """Apply a checked `orderUpdate` body's attributes to an order; ApiError (422) if refused."""
    with state.lock:
        original = state.order(order_id)
        patch = _Patch(state, attributes, now, gateway_refusal, PatchOutcome(copy.deepcopy(original)), expired_card)
        for step in _PATCH_STEPS:
            step(patch)
        _commit(patch, order_id, original)
        return patch.outcome


def _associate_customer(state: SandboxState, draft: Order, email: str, now: int, new_customers: list[Customer]) -> None:
    """`customer_email` finds the customer with that email, or creates a prospect one."""
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        raise validation_error(
            "customer_email is not a valid email address",
            pointer="/data/attributes/customer_email",
            error="invalid_email",
        )
    draft.customer_email = email
    customer = state.customer_by_email(email)
    if customer is None:
        customer = Customer(state.ids.new(), email, False, "prospect", now, now)
        new_customers.append(customer)
    draft.customer_id = customer.id


def _use_wallet_entry(state: SandboxState, draft: Order, entry_id: Any, now: int, outcome: PatchOutcome) -> WalletEntry:
    pointer = "/data/attributes/_customer_payment_source_id"
    entry = state.wallet.get(entry_id)
    if entry is None:
        raise validation_error(f"customer payment source {entry_id!r} not found", pointer=pointer, error="not_found")
    if draft.guest or entry.customer_id != draft.customer_id:
        raise validation_error(
            f"customer payment source {entry_id!r} does not belong to the order's customer",
            pointer=pointer,
            error="not_owned",
        )
    origin = state.payment_sources.get(entry.payment_source_id)
    if origin is not None and origin.order_id == draft.id:
        draft.payment_source_id = origin.id
    else:
        source = PaymentSource(
            id=state.ids.new(),
            type=entry.payment_source_type,
            order_id=draft.id,
            customer_token=entry.customer_token,
            payment_source_token=entry.payment_source_token,
            created_at=now,
            updated_at=now,
            wallet_entry_id=entry.id,
        )
        if origin is not None:
            source.card_brand = origin.card_brand
            source.card_last4 = origin.card_last4
            source.card_exp_month = origin.card_exp_month
            source.card_exp_year = origin.card_exp_year
            source.card_fingerprint = origin.card_fingerprint
            source.options = copy.deepcopy(origin.options)
            source.gateway = copy.deepcopy(origin.gateway)
        outcome.new_sources.append(source)
        draft.payment_source_id = source.id
    draft.payment_method_id = state.payment_method_for(
        draft.market_id, entry.payment_source_type, draft.currency_code, now
    )
    return entry


BRAINTREE_NONCE_USED = "cannot use a payment_method_nonce more than once"


def gateway_refusal(source: PaymentSource, order: Order) -> tuple[str, str] | None:
    """(meta.error, detail) when the gateway cannot save `source` into a wallet, else None.

    From each gateway's "reusing the payment source" how-to
    (https://docs.commercelayer.io/how-tos/placing-orders/payments/<gateway>/reusing-the-payment-source):
    Braintree nonces are one-time (placing the order uses it); Adyen needs
    `payment_request_data` and an account that returns `recurringDetailReference`;
    Checkout.com needs `payment_response.source`; Klarna `auth_token`; Stripe a source created
    with `options.setup_future_usage = "off_session"`. A record made from a wallet entry holds a
    gateway token already, so it can be saved again."""
    if source.wallet_entry_id is not None:
        return None
    gw, ptype = source.gateway, source.type
    if ptype == "braintree_payments" and (gw.get("nonce_used") or order.placed_at is not None):
        return "nonce_used", f"Braintree: {BRAINTREE_NONCE_USED}"
    if ptype == "adyen_payments":
        if gw.get("payment_request_data") is None:
            return (
                "no_payment_request_data",
                "Adyen: the payment source has no payment_request_data",
            )
        if not gw.get("recurring", True):
            return (
                "no_recurring_detail_reference",
                "Adyen: the account returned no recurringDetailReference",
            )
    if ptype == "checkout_com_payments" and not gw.get("payment_response_source", True):
        return "no_payment_response_source", "Checkout.com: payment_response has no source"
    if ptype == "klarna_payments" and gw.get("auth_token", "present") in (None, ""):
        return "no_auth_token", "Klarna: the payment source has no auth_token"
    if ptype == "stripe_payments" and source.options.get("setup_future_usage") != "off_session":
        return (
            "no_setup_future_usage",
            'Stripe: the payment source was not created with setup_future_usage "off_session"',
        )
    return None


def _save_to_wallet(
    state: SandboxState, draft: Order, now: int, outcome: PatchOutcome, refusal: str = "error"
) -> WalletEntry | None:
    pointer = "/data/attributes/_save_payment_source_to_customer_wallet"
    if draft.guest:
        raise validation_error(
            "Access denied: a guest order has no customer wallet",
            pointer=pointer,
            error="guest",
            title="Access denied",
        )
    if draft.customer_id is None or draft.customer_id not in state.customers:
        raise validation_error(
            "the order has no customer whose wallet could hold the payment source",
            pointer=pointer,
            error="no_customer",
        )
    source = state.payment_sources.get(draft.payment_source_id or "") or next(
        (s for s in outcome.new_sources if s.id == draft.payment_source_id), None
    )
    if source is None:
        raise validation_error("the order has no payment source to save", pointer=pointer, error="no_payment_source")
    if source.type not in WALLET_TYPES:
        raise validation_error(
            f"{source.type} cannot be saved into a customer wallet",
            pointer=pointer,
            error="no_wallet_flow",
        )
    refused = gateway_refusal(source, draft)
    if refused is not None:
        if refusal == "no_entry":
            outcome.refused_without_entry = refused[0]
            return None
        raise validation_error(refused[1], pointer=pointer, error=refused[0])
    return WalletEntry(
        id=state.ids.new(),
        customer_id=draft.customer_id,
        payment_source_id=source.id,
        payment_source_type=source.type,
        name=wallet_entry_name(source.card_last4, source.type),
        customer_token=source.customer_token,
        payment_source_token=source.payment_source_token,
        created_at=now,
        updated_at=now,
        origin_order_id=draft.id,
        payment_method_id=draft.payment_method_id,
    )


def new_order_token() -> str:
    return secrets.token_hex(16)


# -- listing --------------------------------------------------------------------------------

_TIME_FIELDS = ("created_at", "updated_at", "placed_at")
_PREDICATES = ("gteq", "lteq", "gt", "lt")
SORTABLE = ("created_at", "updated_at", "placed_at", "number", "status")
_FILTER_KEY = re.compile(r"^filter\[q\]\[([a-z_]+)\]$")


@dataclass(frozen=True)
class Page:
    number: int
    size: int


def bad_request(code: str, title: str, detail: str, *, parameter: str) -> ApiError:
    return ApiError(400, code, title, detail, meta={"parameter": parameter})


def parse_page(args: Mapping[str, str], *, default_size: int, max_size: int) -> Page:
    """`page[number]` (from 1) and `page[size]` (1..max); 400 INVALID_PAGE_VALUE otherwise."""
    values = {}
    for key, default, top in (("number", 1, None), ("size", default_size, max_size)):
        raw = args.get(f"page[{key}]")
        if raw is None:
            values[key] = default
            continue
        if not raw.isdigit() or int(raw) < 1 or (top is not None and int(raw) > top):
            raise bad_request(
                "INVALID_PAGE_VALUE",
                "Invalid page value",
                f"{raw} is not a valid value for {key}.",
                parameter=f"page[{key}]",
            )
        values[key] = int(raw)
    return Page(values["number"], values["size"])


def page_count(record_count: int, size: int) -> int:
    return math.ceil(record_count / size)


def order_filters(args: Mapping[str, str]) -> list[Callable[[Order], bool]]:
    """Predicates for the supported `filter[q][...]` parameters; 400 for anything else."""
    out: list[Callable[[Order], bool]] = []
    for key in args:
        if not key.startswith("filter"):
            continue
        m = _FILTER_KEY.match(key)
        name = m.group(1) if m else ""
        value = args[key]
        predicate = _order_predicate(name, value)
        if predicate is None:
            supported = [f"{f}_{p}" for f in _TIME_FIELDS for p in _PREDICATES]
            supported += ["status_eq", "status_in", "customer_id_eq", "customer_email_eq", "id_in"]
            raise bad_request(
                "FILTER_NOT_ALLOWED",
                "Filter not allowed",
                f"{key} is not a filter the sandbox supports (filter[q][X] with X in {', '.join(supported)}).",
                parameter=key,
            )
        out.append(predicate)
    return out


def _order_predicate(name: str, value: str) -> Callable[[Order], bool] | None:
    field_name, _, predicate = name.rpartition("_")
    if field_name in _TIME_FIELDS and predicate in _PREDICATES:
        try:
            wanted = parse_iso_micros(value)
        except ValueError:
            raise bad_request(
                "INVALID_FILTER_VALUE",
                "Invalid filter value",
                f"{value!r} is not an ISO 8601 time.",
                parameter=f"filter[q][{name}]",
            ) from None
        compare: Callable[[int], bool] = {
            "gteq": lambda a: a >= wanted,
            "lteq": lambda a: a <= wanted,
            "gt": lambda a: a > wanted,
            "lt": lambda a: a < wanted,
        }[predicate]

        def by_time(o: Order) -> bool:
            stamp = getattr(o, field_name)
            return stamp is not None and compare(stamp * 1000)

        return by_time
    if name == "status_eq":
        return lambda o: o.status == value
    if name == "status_in":
        wanted_statuses = set(value.split(","))
        return lambda o: o.status in wanted_statuses
    if name == "customer_id_eq":
        return lambda o: o.customer_id == value
    if name == "customer_email_eq":
        return lambda o: (o.customer_email or "").lower() == value.lower()
    if name == "id_in":
        ids = set(value.split(","))
        return lambda o: o.id in ids
    return None


def order_sort_key(sort: str | None) -> Callable[[Order], Any]:
    """Key for `sort=updated_at,-number` (default `created_at`); 400 INVALID_SORT_CRITERIA."""
    fields_ = [f.strip() for f in (sort or "created_at").split(",") if f.strip()]
    spec = []
    for f in fields_:
        name = f.lstrip("-")
        if name not in SORTABLE:
            raise bad_request(
                "INVALID_SORT_CRITERIA",
                "Invalid sort criteria",
                f"{name} is not a valid sort criteria for orders.",
                parameter="sort",
            )
        spec.append((name, f.startswith("-")))

    def key(o: Order) -> tuple[Any, ...]:
        parts: list[Any] = []
        for name, descending in spec:
            value = getattr(o, name)
            if name == "status":
                rank = [ord(ch) for ch in value]
                parts.append([-r for r in rank] if descending else rank)
                continue
            missing = value is None
            number = 0 if missing else value
            parts.append((missing, -number if descending else number))
        parts.append(o.id)
        return tuple(parts)

    return key
