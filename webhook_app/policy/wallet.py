"""Is this order's payment source already in the customer's wallet? Told from documented answers.

Commerce Layer puts relationship linkage (`relationships.X.data`) only on the relationship paths a
request's `include` (or a webhook's `include_resources`) names, on included resources as on the
main one (https://docs.commercelayer.io/core/including-associations). A wallet entry
(`customer_payment_sources`) included through `available_customer_payment_sources` therefore says
which payment source it was made from only when the path
`available_customer_payment_sources.payment_source` was asked for. Without that linkage the entry
still carries the gateway's `payment_source_token`, which the order's payment source carries too
(under a gateway-specific attribute, `SOURCE_TOKEN_PATHS`).

So an entry is recognised as this payment source's by linkage first, then by gateway token; and
where neither can be compared (the wallet or the linkage was not included, the token is not set),
the answer is *unknown*, never "not in the wallet": the worker then reads the order once with the
paths that carry the linkage (`READ_INCLUDES`) before it writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook_app.events import Event, Resource

WALLET = "available_customer_payment_sources"
WALLET_SOURCES = f"{WALLET}.payment_source"
# Asked for wherever a request about the order is made anyway (the PATCH that saves, the read
# before writing again): each wallet entry then carries its `payment_source` linkage.
READ_INCLUDES = ("payment_source", WALLET, WALLET_SOURCES)
SAVE_INCLUDES = (WALLET, WALLET_SOURCES)

# Where each payment source type carries the gateway's token for the saved instrument, the value
# a wallet entry made from it holds as `payment_source_token`. Commerce Layer documents the wallet
# entry's `payment_source_token` ("the payment source token stored in the gateway") but not which
# source attribute it is copied from: these are the gateways' own names for the reusable
# instrument (Stripe's PaymentMethod id, Braintree's vaulted payment method token, Checkout.com's
# source id, Adyen's recurringDetailReference, the external gateway's token).
SOURCE_TOKEN_PATHS: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "stripe_payments": (("payment_method", "id"), ("options", "payment_method")),
    "braintree_payments": (("options", "payment_method_token"), ("payment_id",)),
    "checkout_com_payments": (("source_id",), ("payment_response", "source", "id")),
    "adyen_payments": (
        ("payment_response", "additionalData", "recurring.recurringDetailReference"),
        ("payment_response", "additionalData", "recurringDetailReference"),
        ("payment_response", "recurringDetailReference"),
    ),
    "klarna_payments": (("auth_token",), ("payment_source_token",)),
    "axerve_payments": (("payment_request_data", "request_token"), ("payment_source_token",)),
    "external_payments": (("payment_source_token",),),
}


def _dig(value: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def source_tokens(source: Resource | None) -> frozenset[str]:
    """The gateway tokens a payment source record carries (empty if none is set or sent)."""
    if source is None:
        return frozenset()
    paths = SOURCE_TOKEN_PATHS.get(source.type, (("payment_source_token",),))
    out = set()
    for path in paths:
        v = _dig(source.attributes, path)
        if isinstance(v, Mapping):  # e.g. Stripe's options.payment_method given as an object
            v = v.get("id")
        if isinstance(v, str) and v:
            out.add(v)
    return frozenset(out)


def entry_token(entry: Resource) -> str | None:
    v = entry.attributes.get("payment_source_token")
    return v if isinstance(v, str) and v else None


def entry_source_id(entry: Resource) -> str | None:
    """The payment source the entry was made from, if the answer carries that linkage."""
    link = entry.linkage("payment_source")
    return str(link["id"]) if isinstance(link, dict) and link.get("id") else None


@dataclass(frozen=True)
class WalletLook:
    """What an answer tells about this payment source and the wallet.

    `entry_id` is the matching entry (with `how`: "linkage" or "token"); with no match, `known`
    says whether the answer could tell: False when the wallet, an entry's linkage or the tokens
    needed to compare were simply not sent."""

    entry_id: str | None
    known: bool
    how: str | None = None
    entries: tuple[str, ...] = ()

    @property
    def in_wallet(self) -> bool:
        return self.entry_id is not None


def entry_matches(
    entry: Resource, source: Resource, tokens: frozenset[str], included: Mapping[tuple[str, str], Resource]
) -> str | None | bool:
    """ "linkage"/"token" if the entry is this source's; False if it is certainly not; None if unknown."""
    linked = entry_source_id(entry)
    if linked is not None:
        if linked == source.id:
            return "linkage"
        # Linked to another record: still the same card if the gateway token agrees (a returning
        # customer's new record for an instrument already saved is matched by issue-11 keys).
        linked_source = included.get((source.type, linked))
        if tokens and linked_source is not None and tokens & source_tokens(linked_source):
            return "token"
        token = entry_token(entry)
        if tokens and token in tokens:
            return "token"
        return False
    token = entry_token(entry)
    if tokens and token is not None:
        return "token" if token in tokens else False
    return None


def look_up(event: Event) -> WalletLook:
    """Find the order's payment source among the wallet entries the answer carries."""
    source = event.payment_source
    if source is None or event.wallet is None:
        return WalletLook(None, known=False)
    tokens = source_tokens(source)
    undecided = False
    for entry in event.wallet:
        found = entry_matches(entry, source, tokens, event.included)
        if found:
            return WalletLook(entry.id, known=True, how=str(found), entries=tuple(e.id for e in event.wallet))
        if found is None:
            undecided = True
    return WalletLook(None, known=not undecided, entries=tuple(e.id for e in event.wallet))


def entry_is_order_source(entry: Resource, event: Event) -> bool:
    """For `use_wallet_source`: does the order already pay with this wallet entry?

    Using an entry on an order gives the order a payment source record of its own made from the
    entry's tokens, so the record id rarely equals the entry's source: the tokens tell."""
    source = event.payment_source
    if source is None:
        return False
    if entry_source_id(entry) == source.id:
        return True
    token = entry_token(entry)
    return token is not None and token in source_tokens(source)


def newest_fresh_entry(entries: Iterable[Resource], before: Iterable[str]) -> Resource | None:
    """The newest entry not among `before` (by created_at, then id)."""
    seen = set(before)
    fresh = [e for e in entries if e.id not in seen]
    if not fresh:
        return None
    return max(fresh, key=lambda r: (str(r.attributes.get("created_at") or ""), r.id))
