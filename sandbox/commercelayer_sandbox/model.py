"""The records the sandbox keeps in memory, one dataclass per Commerce Layer resource.

Records are plain mutable dataclasses guarded by `SandboxState.lock`; timestamps are integer
milliseconds (see `timeutil`). Payment source types are Commerce Layer's plural resource types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Payment source types with a documented "reusing the payment source" (wallet) flow.
WALLET_TYPES = frozenset(
    {
        "adyen_payments",
        "axerve_payments",
        "braintree_payments",
        "checkout_com_payments",
        "external_payments",
        "klarna_payments",
        "stripe_payments",
    }
)
#: Payment source types without one: saving them into a wallet is refused.
NO_WALLET_TYPES = frozenset({"paypal_payments", "satispay_payments", "wire_transfers"})
PAYMENT_SOURCE_TYPES = WALLET_TYPES | NO_WALLET_TYPES
#: Types whose payment instrument is a card (they get a brand and last 4 digits).
CARD_TYPES = frozenset(
    {
        "adyen_payments",
        "axerve_payments",
        "braintree_payments",
        "checkout_com_payments",
        "external_payments",
        "stripe_payments",
    }
)

ORDER_STATUSES = ("draft", "pending", "editing", "placing", "placed", "approved", "cancelled")
PAYMENT_STATUSES = (
    "unpaid",
    "authorized",
    "partially_authorized",
    "paid",
    "partially_paid",
    "voided",
    "partially_voided",
    "refunded",
    "partially_refunded",
    "free",
)
FULFILLMENT_STATUSES = ("unfulfilled", "in_progress", "fulfilled", "not_required")
CUSTOMER_STATUSES = ("prospect", "acquired", "repeat")


@dataclass
class Market:
    id: str
    number: int
    name: str
    code: str
    created_at: int
    updated_at: int
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Customer:
    id: str
    email: str
    has_password: bool
    status: str
    created_at: int
    updated_at: int
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Created for guest checkouts (Commerce Layer creates such customers from the order's
    #: email); orders of a guest customer default to `guest: true`. Not rendered.
    guest: bool = False
    #: The current anonymization request (`anonymization.py`): its status and info object.
    anonymization_status: str | None = None
    anonymization_info: dict[str, Any] | None = None


@dataclass
class PaymentSource:
    id: str
    type: str
    order_id: str | None
    customer_token: str
    payment_source_token: str
    card_brand: str = ""
    card_last4: str = ""
    card_exp_month: int = 12
    card_exp_year: int = 2030
    created_at: int = 0
    updated_at: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Stripe's card fingerprint: the same card gives the same fingerprint on every record.
    card_fingerprint: str = ""
    #: Gateway-specific facts that decide whether a save into the wallet works (see
    #: `wallet.py`): `payment_request_data` (Adyen), `recurring` (the Adyen account returns a
    #: `recurringDetailReference`), `payment_response_source` (Checkout.com), `auth_token`
    #: (Klarna), `payment_method_nonce` (Braintree), `nonce_used` (Braintree, after placing).
    gateway: dict[str, Any] = field(default_factory=dict)
    #: The wallet entry this record was made from (`_customer_payment_source_id`), if any.
    wallet_entry_id: str | None = None


@dataclass
class PaymentMethod:
    """A market's way to pay with one payment source type (derived from the orders' sources)."""

    id: str
    market_id: str
    payment_source_type: str
    name: str
    currency_code: str
    created_at: int
    updated_at: int


@dataclass
class LineItem:
    id: str
    order_id: str
    sku_code: str
    name: str
    quantity: int
    unit_amount_cents: int
    created_at: int
    updated_at: int
    item_type: str = "skus"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def total_amount_cents(self) -> int:
        return self.quantity * self.unit_amount_cents


@dataclass
class Order:
    id: str
    number: int
    market_id: str
    customer_id: str | None
    customer_email: str | None
    guest: bool
    status: str
    payment_status: str
    fulfillment_status: str
    payment_source_id: str | None
    line_item_ids: list[str]
    currency_code: str
    language_code: str
    country_code: str
    shipping_amount_cents: int
    token: str
    created_at: int
    updated_at: int
    placed_at: int | None = None
    approved_at: int | None = None
    cancelled_at: int | None = None
    archived_at: int | None = None
    payment_updated_at: int | None = None
    fulfillment_updated_at: int | None = None
    reference: str | None = None
    reference_origin: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Writable string/boolean attributes of `orderUpdate` the sandbox only stores and echoes
    #: (cart_url, coupon_code, autorefresh, ...).
    extra: dict[str, Any] = field(default_factory=dict)
    payment_method_id: str | None = None


@dataclass
class WalletEntry:
    """A `customer_payment_sources` record: a payment source saved into a customer's wallet."""

    id: str
    customer_id: str
    payment_source_id: str
    payment_source_type: str
    name: str
    customer_token: str
    payment_source_token: str
    created_at: int
    updated_at: int
    #: The order whose PATCH created it (None for entries seeded by a scenario).
    origin_order_id: str | None = None
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    payment_method_id: str | None = None


#: Application kinds whose tokens carry an organization (js-auth's JWT payload types).
APPLICATION_KINDS = ("integration", "sales_channel", "webapp")


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str = field(repr=False)
    scope: str = "market:all"
    #: The API credentials' kind: `integration` (confidential), `sales_channel` (public).
    kind: str = "integration"
    application_id: str = ""


@dataclass
class Token:
    value: str = field(repr=False)
    client_id: str
    scope: str
    created_at: float
    expires_at: float
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass
class Webhook:
    id: str
    name: str
    topic: str
    callback_url: str
    include_resources: list[str]
    shared_secret: str = field(repr=False)
    circuit_state: str = "closed"
    circuit_failure_count: int = 0
    created_at: int = 0
    updated_at: int = 0
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class EventCallback:
    """One delivery attempt of one event to one webhook."""

    id: str
    webhook_id: str
    event_id: str
    topic: str
    attempt: int
    callback_url: str
    body: bytes = field(repr=False)
    signature: str
    response_code: int | None
    response_message: str
    succeeded: bool
    duration_ms: float
    created_at: int
    lost_answer: bool = False


@dataclass
class Event:
    """A triggered event: one topic on one order (or customer), delivered to every matching webhook
    (the `events` resource, `name` being the topic; `_trigger` sends it again)."""

    id: str
    topic: str
    order_id: str  # the resource's id: an order's, or a customer's when resource_type is customers
    created_at: int
    webhook_ids: list[str]
    resource_type: str = "orders"
    updated_at: int = 0
    triggered: int = 0  # times `_trigger` sent it again
    reference: str | None = None
    reference_origin: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
