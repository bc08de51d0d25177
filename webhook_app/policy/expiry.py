"""When does a wallet entry's card expire? Told from the entry's payment source, never guessed.

A wallet entry (`customer_payment_sources`) carries no expiry: only `name`, the tokens,
`reference` and `metadata`. Its payment source does, where the gateway fills it in: the
`payment_instrument` object (`card_expiry_month`, `card_expiry_year`: Stripe, Adyen and others)
or the gateway's own card attributes (Stripe's `payment_method.card.exp_month`/`exp_year`).
The entry's payment source is only in a body whose `include` named the path
`available_customer_payment_sources.payment_source` (or, on the wallet list,
`payment_source`); where it was not sent, or does not say, the expiry is unknown.

A card is valid through the last day of its expiry month (UTC): it has expired at a time in a
later month. The policy judges at the later of the order's time (`placed_at`, else `updated_at`,
else `created_at`) and the clock: the entry is used now, so a card that was valid when the order
was last updated but has expired since (an order pending across a month end, a job retried or
held past it, a replay) would be refused by the gateway and is never chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from webhook_app.events import Event, Resource
from webhook_app.policy.paths import dig

# Where each source carries the card's expiry month and year, first found wins.
EXPIRY_PATHS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("payment_instrument", "card_expiry_month"), ("payment_instrument", "card_expiry_year")),
    (("payment_method", "card", "exp_month"), ("payment_method", "card", "exp_year")),
)
ORDER_TIMES = ("placed_at", "updated_at", "created_at")


def _now() -> datetime:
    return datetime.now(UTC)


# The clock the expiry is judged by, besides the order's time (tests set it).
clock: Callable[[], datetime] = _now


@dataclass(frozen=True, order=True)
class Expiry:
    """A card's expiry month: valid through its last day."""

    year: int
    month: int

    def expired_at(self, at: datetime) -> bool:
        return (self.year, self.month) < (at.year, at.month)

    def __str__(self) -> str:
        return f"{self.month:02d}/{self.year}"


def _number(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    return None


def card_expiry(source: Resource | None) -> Expiry | None:
    """The card expiry a payment source record carries; None if it carries none (or nonsense)."""
    if source is None:
        return None
    for month_path, year_path in EXPIRY_PATHS:
        month, year = _number(dig(source.attributes, month_path)), _number(dig(source.attributes, year_path))
        if month is None or year is None:
            continue
        if year < 100:  # a two-digit year, as some gateways write it
            year += 2000
        if 1 <= month <= 12 and 2000 <= year <= 2200:
            return Expiry(year, month)
    return None


def entry_source(entry: Resource, included: Mapping[tuple[str, str], Resource]) -> Resource | None:
    """The entry's payment source record, if the answer carried its linkage and the record."""
    link = entry.linkage("payment_source")
    if not isinstance(link, dict) or not link.get("id") or not link.get("type"):
        return None
    return included.get((str(link["type"]), str(link["id"])))


def entry_expiry(entry: Resource, included: Mapping[tuple[str, str], Resource]) -> Expiry | None:
    return card_expiry(entry_source(entry, included))


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def order_time(event: Event) -> datetime | None:
    """The order's time: when it was placed, else last updated, else created (UTC)."""
    for name in ORDER_TIMES:
        t = parse_time(event.order.attributes.get(name))
        if t is not None:
            return t.astimezone(UTC)
    return None


@dataclass(frozen=True)
class Sorted:
    """A wallet split when its entries would be used: usable entries (valid or expiry unknown) and the
    expired ones with their expiry."""

    usable: tuple[Resource, ...]
    expired: tuple[tuple[Resource, Expiry], ...]
    at: datetime

    def describe_expired(self) -> str:
        return ", ".join(f"{e.id} (card expired {x})" for e, x in self.expired)


def judged_at(event: Event) -> datetime:
    """When a wallet entry's card is judged: the later of the order's time and now."""
    now = clock().astimezone(UTC)
    at = order_time(event)
    return now if at is None or at < now else at


def split_expired(entries: Sequence[Resource], event: Event) -> Sorted:
    """Entries whose card has certainly expired when they would be used (`judged_at`), and the
    others."""
    at = judged_at(event)
    usable, expired = [], []
    for entry in entries:
        x = entry_expiry(entry, event.included)
        if x is not None and x.expired_at(at):
            expired.append((entry, x))
        else:
            usable.append(entry)
    return Sorted(tuple(usable), tuple(expired), at)
