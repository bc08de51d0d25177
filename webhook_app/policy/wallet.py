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

One card, one entry: a returning customer who types the same card again gets a new payment source
record, so an entry made from another record may still be this card. The policy's `wallet_match`
keys say what makes it so (`MATCH_KEYS`: the gateway token, Stripe's card fingerprint, the
`payment_instrument` card type, last digits and expiry); comparing them needs the entry's own
payment source in `included`, and where it was not sent the answer is unknown, never "no match".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook_app.events import Event, Resource
from webhook_app.policy import expiry
from webhook_app.policy.paths import dig

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


def source_tokens(source: Resource | None) -> frozenset[str]:
    """The gateway tokens a payment source record carries (empty if none is set or sent)."""
    if source is None:
        return frozenset()
    paths = SOURCE_TOKEN_PATHS.get(source.type, (("payment_source_token",),))
    out = set()
    for path in paths:
        v = dig(source.attributes, path)
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
    ref = entry_source_ref(entry)
    return ref[1] if ref else None


# The keys `wallet_match` may name: how an entry made from *another* payment source record is
# recognised as the same card (a returning customer who types the card again gets a new record).
GATEWAY_TOKEN = "gateway_token"  # noqa: S105 (a matching key's name, not a secret)
CARD_FINGERPRINT = "card_fingerprint"
PAYMENT_INSTRUMENT = "payment_instrument"
MATCH_KEYS = (GATEWAY_TOKEN, CARD_FINGERPRINT, PAYMENT_INSTRUMENT)
# Exact identifiers only: a gateway token names one instrument, a Stripe fingerprint one card
# number. Brand + last 4 + expiry (`payment_instrument`) can be shared by two cards, so it is opt-in.
DEFAULT_MATCH = (GATEWAY_TOKEN, CARD_FINGERPRINT)
# How a match was made, strongest first (the strongest match among the entries wins).
_RANK = ("linkage", "token", GATEWAY_TOKEN, CARD_FINGERPRINT, PAYMENT_INSTRUMENT)


def card_fingerprint(source: Resource | None) -> str | None:
    """Stripe's card fingerprint (`payment_method.card.fingerprint`), where the record carries one."""
    if source is None:
        return None
    v = dig(source.attributes, ("payment_method", "card", "fingerprint"))
    return v if isinstance(v, str) and v else None


def _norm(v: Any) -> str | None:
    if isinstance(v, bool) or v is None:
        return None
    text = str(v).strip().lower()
    if text.isdigit():
        text = str(int(text))
    return text or None


def card_details(source: Resource | None) -> tuple[str, ...] | None:
    """`payment_instrument`'s card type, last digits, expiry month and year; None unless all are set."""
    if source is None:
        return None
    pi = source.attributes.get("payment_instrument")
    if not isinstance(pi, Mapping):
        return None
    keys = ("card_type", "card_last_digits", "card_expiry_month", "card_expiry_year")
    out = tuple(_norm(pi.get(k)) for k in keys)
    return None if any(v is None for v in out) else tuple(str(v) for v in out)


def entry_source_ref(entry: Resource) -> tuple[str, str] | None:
    """(type, id) of the payment source the entry was made from, if the answer carries the linkage."""
    link = entry.linkage("payment_source")
    if isinstance(link, dict) and link.get("id"):
        return str(link.get("type") or ""), str(link["id"])
    return None


@dataclass(frozen=True)
class WalletLook:
    """What an answer tells about this payment source and the wallet.

    `entry_id` is the matching entry, `how` the way it matched: "linkage" (the entry was made from
    this very record), "token" (no linkage, the gateway token agrees), or a `wallet_match` key
    when the entry was made from another record of the same card (`other_record`). With no match,
    `known` says whether the answer could tell: False when the wallet, an entry's linkage, or the
    entry's payment source needed to compare were simply not sent."""

    entry_id: str | None
    known: bool
    how: str | None = None
    entries: tuple[str, ...] = ()

    @property
    def in_wallet(self) -> bool:
        return self.entry_id is not None

    @property
    def other_record(self) -> bool:
        """The match is the same card saved from another payment source record."""
        return self.how not in (None, "linkage", "token")


def entry_matches(
    entry: Resource,
    source: Resource,
    tokens: frozenset[str],
    included: Mapping[tuple[str, str], Resource],
    keys: Sequence[str] = DEFAULT_MATCH,
) -> str | None | bool:
    """How the entry matches this source ("linkage", "token" or a `wallet_match` key); False if it
    certainly does not; None if the answer cannot tell."""
    wanted = set(keys)
    fingerprint = card_fingerprint(source) if CARD_FINGERPRINT in wanted else None
    details = card_details(source) if PAYMENT_INSTRUMENT in wanted else None
    by_card = fingerprint is not None or details is not None
    source_sent = bool(source.attributes)
    token = entry_token(entry)
    ref = entry_source_ref(entry)
    if ref is None:
        if GATEWAY_TOKEN in wanted and tokens and token is not None:
            if token in tokens:
                return "token"
            # Another token: another record, but maybe the same card typed again.
            return None if by_card else False
        return None
    linked_type, linked_id = ref
    if linked_id == source.id:
        return "linkage"
    if linked_type and linked_type != source.type:
        return False  # another gateway's entry cannot stand for this source
    other = included.get((linked_type or source.type, linked_id))
    if (
        GATEWAY_TOKEN in wanted
        and tokens
        and (token in tokens or (other is not None and tokens & source_tokens(other)))
    ):
        return GATEWAY_TOKEN
    if not by_card:
        # Nothing else to compare; an unsent source of ours could still have carried a card.
        card_keys = wanted & {CARD_FINGERPRINT, PAYMENT_INSTRUMENT}
        return None if (card_keys and not source_sent) else False
    if other is None or not other.attributes:
        return None  # the entry's payment source was not included: cannot tell
    other_fp = card_fingerprint(other)
    if fingerprint is not None and other_fp is not None:
        # Both carry a fingerprint: it decides (same last 4 and expiry can be another card).
        # Stripe's fingerprint names the card number, not the expiry: a card renewed by its
        # issuer (same number, new expiry) has the same fingerprint, and an entry of the old
        # one stops working at its expiry. Both expiries known and different: another card.
        if other_fp != fingerprint:
            return False
        mine, theirs = expiry.card_expiry(source), expiry.card_expiry(other)
        return False if mine is not None and theirs is not None and mine != theirs else CARD_FINGERPRINT
    if details is not None and card_details(other) == details:
        return PAYMENT_INSTRUMENT
    return False


def look_up(event: Event, keys: Sequence[str] = DEFAULT_MATCH) -> WalletLook:
    """Find the order's payment source (or, by `keys`, its card) among the wallet entries sent."""
    source = event.payment_source
    if source is None or event.wallet is None:
        return WalletLook(None, known=False)
    tokens = source_tokens(source)
    undecided = False
    best: tuple[int, str, str, str] | None = None
    ids = tuple(e.id for e in event.wallet)
    for entry in event.wallet:
        found = entry_matches(entry, source, tokens, event.included, keys)
        if found is None:
            undecided = True
        elif found:
            how = str(found)
            key = (_RANK.index(how), str(entry.attributes.get("created_at") or ""), entry.id, how)
            if best is None or key < best:
                best = key
    if best is not None:
        return WalletLook(best[2], known=True, how=best[3], entries=ids)
    return WalletLook(None, known=not undecided, entries=ids)


def card_key(source: Resource | None, keys: Sequence[str] = DEFAULT_MATCH) -> str:
    """The card's identity for the per-customer card claim, as `keys` define "the same card";
    "" when the source carries none of them (the claim then covers all the customer's cards).

    The card-level identity comes first (Stripe's fingerprint, then `payment_instrument`'s card
    details when opted in): a card typed again gets a new record and a new gateway token but the
    same fingerprint. The gateway token names the instrument when nothing else is there. Hashed,
    so the claim's key holds no card detail."""
    if source is None or not source.attributes:
        return ""
    found: str | None = None
    if CARD_FINGERPRINT in keys and (fp := card_fingerprint(source)) is not None:
        found = f"{CARD_FINGERPRINT}:{fp}"
    elif PAYMENT_INSTRUMENT in keys and (details := card_details(source)) is not None:
        found = f"{PAYMENT_INSTRUMENT}:{'/'.join(details)}"
    elif GATEWAY_TOKEN in keys and (tokens := source_tokens(source)):
        found = f"{GATEWAY_TOKEN}:{min(tokens)}"
    if found is None:
        return ""
    return hashlib.sha256(f"{source.type}\x00{found}".encode()).hexdigest()[:32]


def order_source_entry(event: Event) -> Resource | None:
    """For `use_wallet_source`: the wallet entry the order pays with, if any (of those sent)."""
    return next((e for e in event.wallet or () if entry_is_order_source(e, event)), None)


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
