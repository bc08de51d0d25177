"""A decision and the words it is made of: the actions, the strategies, the wallet-capable types."""

from __future__ import annotations

from dataclasses import dataclass, replace

SAVE = "save_payment_source"
USE_WALLET = "use_wallet_source"
SKIP = "skip"
ACTIONS = (SAVE, USE_WALLET, SKIP)
STRATEGIES = ("newest", "oldest", "only")

# Payment source types with a documented "reusing the payment source" (wallet) flow.
# Not: paypal_payments, satispay_payments, wire_transfers. Commerce Layer's how-tos
# (https://docs.commercelayer.io/how-tos/placing-orders/payments) list them per gateway.
WALLET_SOURCE_TYPES = frozenset(
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


@dataclass(frozen=True)
class Decision:
    """What to do with one event, and why."""

    action: str
    rule: str
    reason: str
    strategy: str | None = None
    guard: str | None = None
    wallet_entry_id: str | None = None

    @property
    def calls_commerce_layer(self) -> bool:
        return self.action in (SAVE, USE_WALLET)

    def guarded(self, guard: str, reason: str) -> Decision:
        return replace(self, action=SKIP, guard=guard, reason=f"guard {guard}: {reason}")
