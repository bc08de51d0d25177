"""Can this gateway save this payment source into the wallet now? Checked before the call.

Each gateway's "reusing the payment source" how-to
(https://docs.commercelayer.io/how-tos/placing-orders/payments/<gateway>/reusing-the-payment-source,
for braintree, adyen, checkout-com, klarna and stripe) names what must hold for
`_save_payment_source_to_customer_wallet` to work; otherwise the save fails at the gateway.
`check` tells which prerequisite is missing and how the operator fixes it.

An attribute the answer did not carry (a stub source, a sparse fieldset) is *unknown* and never a
refusal: Commerce Layer sends unset attributes as `null`, so only a present `null` or empty value
counts as missing. `topic_warnings` says which topics cannot work for a gateway whatever the order
(Braintree's nonce is spent once the order is placed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook_app.events import Event

BRAINTREE = "braintree_payments"
# Order topics fired once the order is placed, or while it is being placed (`orders.placing`:
# the worker's call comes after the gateway's authorization): a Braintree nonce has been used by
# then. Editing and subscriptions happen to placed orders only.
AFTER_PLACING = frozenset(
    {
        "orders.placing",
        "orders.place",
        "orders.approve",
        "orders.cancel",
        "orders.authorize",
        "orders.void",
        "orders.pay",
        "orders.refund",
        "orders.start_fulfilling",
        "orders.cancel_fulfilling",
        "orders.fulfill",
        "orders.start_editing",
        "orders.stop_editing",
        "orders.create_subscriptions",
        "orders.cancel_subscriptions",
    }
)
# Order statuses before placing, when a Braintree nonce is still unused.
BEFORE_PLACING = frozenset({"draft", "pending"})
BRAINTREE_FIX = 'save Braintree sources before the order is placed: give the rule topics = ["orders.pending"]'
_ABSENT = object()


@dataclass(frozen=True)
class NotReady:
    """A prerequisite that is missing: `code` for filtering, `reason` naming the fix."""

    code: str
    reason: str


def _unset(v: Any) -> bool:
    return v is None or v == "" or v == {} or v == []


#: one prerequisite of a gateway: NotReady if the payment source is known to miss it, else None
Prerequisite = Callable[[Event, Mapping[str, Any]], NotReady | None]


def check(event: Event) -> NotReady | None:
    """The first documented prerequisite the order's payment source is known to miss, or None."""
    source = event.payment_source
    if source is None or not source.attributes:
        return None  # not sent: unknown, never a refusal
    for prerequisite in _GATEWAYS.get(source.type, ()):
        missing = prerequisite(event, source.attributes)
        if missing is not None:
            return missing
    return None


def _required(name: str, code: str, reason: str) -> Prerequisite:
    """The prerequisite that attribute `name`, when present, is set: else NotReady(code, reason)."""

    def missing(event: Event, a: Mapping[str, Any]) -> NotReady | None:
        return NotReady(code, reason) if _unset(a.get(name, _ABSENT)) else None

    return missing


def _answer_with(has: Callable[[Any], bool], code: str, reason: str) -> Prerequisite:
    """The prerequisite that the gateway's answer (`payment_response`), when present, `has` what
    the save needs: else NotReady(code, reason)."""

    def missing(event: Event, a: Mapping[str, Any]) -> NotReady | None:
        response = a.get("payment_response", _ABSENT)
        return NotReady(code, reason) if response is not _ABSENT and not has(response) else None

    return missing


def _braintree_nonce_unspent(event: Event, a: Mapping[str, Any]) -> NotReady | None:
    status = event.order.attributes.get("status")
    placed_at = event.order.attributes.get("placed_at")
    if (isinstance(status, str) and status not in BEFORE_PLACING) or bool(placed_at):
        return NotReady(
            "braintree_nonce_used",
            f"braintree_payments: the payment_method_nonce is one-time-use and the order is already "
            f'placed (status {status}), so Braintree would answer "cannot use a payment_method_nonce '
            f'more than once"; {BRAINTREE_FIX}',
        )
    return None


def _adyen_reference(response: Any) -> bool:
    """Whether an Adyen answer carries a recurringDetailReference (an empty or odd answer: unknown, so yes)."""
    if not isinstance(response, Mapping) or not response:
        return True
    extra = response.get("additionalData")
    extra = extra if isinstance(extra, Mapping) else {}
    for v in (
        extra.get("recurring.recurringDetailReference"),
        extra.get("recurringDetailReference"),
        response.get("recurringDetailReference"),
    ):
        if isinstance(v, str) and v:
            return True
    return False


def _stripe(event: Event, a: Mapping[str, Any]) -> NotReady | None:
    options = a.get("options", _ABSENT)
    if options is _ABSENT:
        return None
    usage = options.get("setup_future_usage") if isinstance(options, Mapping) else None
    if usage != "off_session":
        return NotReady(
            "stripe_no_setup_future_usage",
            f'stripe_payments: options.setup_future_usage is {usage!r}, not "off_session"; create '
            'Stripe payment sources with options = {setup_future_usage = "off_session"}',
        )
    return None


def _axerve(event: Event, a: Mapping[str, Any]) -> NotReady | None:
    if a.get("request_token", _ABSENT) is False:
        return NotReady(
            "axerve_no_request_token",
            "axerve_payments: request_token is false; create Axerve payment sources with "
            "request_token = true (mandatory to use the customer's wallet)",
        )
    return None


#: each gateway's prerequisites in the order they are checked, by payment source type (other
#: types have none known)
_GATEWAYS: dict[str, tuple[Prerequisite, ...]] = {
    BRAINTREE: (
        _braintree_nonce_unspent,
        _required(
            "payment_method_nonce",
            "braintree_no_nonce",
            "braintree_payments: payment_method_nonce is not set; the Braintree JS SDK must send it "
            "to the payment source before the save",
        ),
    ),
    "adyen_payments": (
        _required(
            "payment_request_data",
            "adyen_no_payment_request_data",
            "adyen_payments: payment_request_data is not set; the checkout must send the Adyen "
            "payment request data (collected by the client) to the payment source before the save",
        ),
        _answer_with(
            _adyen_reference,
            "adyen_no_recurring_detail_reference",
            "adyen_payments: the Adyen answer carries no recurringDetailReference; have the Adyen "
            "account return it (Customer Area, Developers > Additional data: recurring details)",
        ),
    ),
    "checkout_com_payments": (
        _answer_with(
            lambda response: isinstance(response, Mapping) and not _unset(response.get("source")),
            "checkout_com_no_payment_response_source",
            "checkout_com_payments: payment_response.source is not set; save after the payment has "
            "been authorized (the answer then carries the source), e.g. on orders.place",
        ),
    ),
    "klarna_payments": (
        _required(
            "auth_token",
            "klarna_no_auth_token",
            "klarna_payments: auth_token is not set; save after the Klarna client authorization "
            "has returned its auth_token to the payment source",
        ),
    ),
    "stripe_payments": (_stripe,),
    "axerve_payments": (_axerve,),
}


def topic_warnings(types: Iterable[str], topics: Iterable[str] | None) -> list[str]:
    """Why saving sources of `types` on `topics` (None: every order topic) cannot work."""
    if BRAINTREE not in set(types):
        return []
    if topics is None:
        return [f"saves braintree_payments sources on every order topic, including orders.place; {BRAINTREE_FIX}"]
    late = sorted(set(topics) & AFTER_PLACING)
    if not late:
        return []
    return [
        f"saves braintree_payments sources on {', '.join(late)}, after the order is placed, when the "
        f"one-time-use payment_method_nonce is spent; {BRAINTREE_FIX}"
    ]
