"""`use_wallet_source` never chooses an entry whose card has expired at the order's time."""

from __future__ import annotations

import textwrap
import tomllib
from datetime import UTC, datetime

import pytest
from support.builders import order_document

from webhook_app.events import Event, Resource
from webhook_app.policy import SKIP, USE_WALLET, expiry, parse_policy
from webhook_app.policy.expiry import Expiry, card_expiry, order_time


def reuse_policy(strategy: str = "newest"):
    return parse_policy(
        tomllib.loads(
            textwrap.dedent(
                f"""
                version = 1
                [default]
                action = "skip"
                [[rules]]
                name = "reuse"
                action = "use_wallet_source"
                strategy = "{strategy}"
                """
            )
        )
    )


def card_source(source_id: str, month, year, *, where: str = "payment_instrument") -> dict:
    attrs: dict = {}
    if where == "payment_instrument":
        attrs["payment_instrument"] = {"card_expiry_month": month, "card_expiry_year": year, "card_last_digits": "4242"}
    elif where == "stripe":
        attrs["payment_method"] = {"id": f"pm_{source_id}", "card": {"exp_month": month, "exp_year": year}}
    return {"id": source_id, "type": "stripe_payments", "attributes": attrs}


@pytest.fixture(autouse=True)
def clock_before_the_orders(monkeypatch):
    """The orders below are placed in 2026; the worker's clock is set before them, so that each
    test judges at the order's time (the later of the two)."""
    monkeypatch.setattr(expiry, "clock", lambda: datetime(2026, 1, 1, tzinfo=UTC))


def event_with(cards: list[tuple[str, str, dict | None]], *, placed_at: str = "2026-05-10T10:00:00.000Z") -> Event:
    """An order placed at `placed_at` whose wallet holds one entry per (entry id, created_at, source)."""
    wallet = [{"id": wid, "created_at": created, "source_id": f"ps{wid}"} for wid, created, _ in cards]
    doc = order_document(source_id="psOrder0001", wallet=wallet)
    doc["data"]["attributes"]["placed_at"] = placed_at
    doc["data"]["attributes"]["updated_at"] = placed_at
    for wid, _, source in cards:
        if source is not None:
            doc["included"].append({**source, "id": f"ps{wid}"})
    return Event.from_document("orders.place", doc)


def test_card_expiry_is_read_from_payment_instrument_or_stripe_card():
    def src(attrs):
        return Resource("stripe_payments", "x", attrs, {})

    assert card_expiry(src({"payment_instrument": {"card_expiry_month": "4", "card_expiry_year": "2031"}})) == Expiry(
        2031, 4
    )
    assert card_expiry(src({"payment_method": {"card": {"exp_month": 12, "exp_year": 2029}}})) == Expiry(2029, 12)
    assert card_expiry(src({"payment_instrument": {"card_expiry_month": 1, "card_expiry_year": 27}})) == Expiry(2027, 1)
    # nothing, half, or nonsense: unknown, never a guess
    assert card_expiry(src({})) is None
    assert card_expiry(src({"payment_instrument": {"card_expiry_month": "4"}})) is None
    assert card_expiry(src({"payment_instrument": {"card_expiry_month": 13, "card_expiry_year": 2030}})) is None
    assert card_expiry(None) is None


def test_a_card_is_valid_through_the_last_day_of_its_month():
    x = Expiry(2026, 5)
    assert not x.expired_at(datetime(2026, 5, 31, 23, 59, tzinfo=UTC))
    assert x.expired_at(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    assert x.expired_at(datetime(2027, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("where", ["payment_instrument", "stripe"])
def test_newest_passes_over_an_expired_card_to_a_valid_one_and_says_so(where):
    ev = event_with(
        [
            ("WalValid", "2025-01-01T00:00:00Z", card_source("x", 12, 2030, where=where)),
            ("WalExpir", "2026-01-01T00:00:00Z", card_source("x", 4, 2026, where=where)),  # newest, expired in April
        ]
    )
    d = reuse_policy("newest").decide(ev)
    assert d.action == USE_WALLET and d.wallet_entry_id == "WalValid"
    assert "WalExpir (card expired 04/2026)" in d.reason


def test_oldest_and_only_count_only_entries_whose_card_has_not_expired():
    ev = event_with(
        [
            ("WalExpir", "2025-01-01T00:00:00Z", card_source("x", 3, 2026)),
            ("WalValid", "2026-01-01T00:00:00Z", card_source("x", 5, 2026)),  # expires this very month
        ]
    )
    assert reuse_policy("oldest").decide(ev).wallet_entry_id == "WalValid"
    assert reuse_policy("only").decide(ev).wallet_entry_id == "WalValid"


def test_only_expired_cards_skip_with_the_reason():
    ev = event_with([("WalExpir", "2025-01-01T00:00:00Z", card_source("x", 1, 2024))])
    d = reuse_policy().decide(ev)
    assert d.action == SKIP and d.guard == "wallet_card_expired"
    assert "WalExpir (card expired 01/2024)" in d.reason and d.wallet_entry_id is None


def test_unknown_expiry_is_not_treated_as_expired():
    # The entry's payment source was not sent (or says nothing of the card): it may still be used.
    ev = event_with(
        [
            ("WalUnkno", "2025-01-01T00:00:00Z", None),
            ("WalBlank", "2025-02-01T00:00:00Z", card_source("x", None, None, where="none")),
        ]
    )
    assert reuse_policy().decide(ev).wallet_entry_id == "WalBlank"


def test_judged_at_the_later_of_the_order_time_and_the_clock(monkeypatch):
    cards = [("WalCard1", "2025-01-01T00:00:00Z", card_source("x", 4, 2026))]
    monkeypatch.setattr(expiry, "clock", lambda: datetime(2026, 4, 10, tzinfo=UTC))
    assert reuse_policy().decide(event_with(cards, placed_at="2026-04-30T23:00:00Z")).action == USE_WALLET
    assert reuse_policy().decide(event_with(cards, placed_at="2026-05-01T00:00:00Z")).guard == "wallet_card_expired"
    # The order was last updated while the card was valid, but the entry would be used now, in
    # a later month: the gateway would refuse it (an order pending across a month end, a job
    # retried, held or replayed past it).
    monkeypatch.setattr(expiry, "clock", lambda: datetime(2026, 5, 1, 0, 0, 1, tzinfo=UTC))
    assert reuse_policy().decide(event_with(cards, placed_at="2026-04-30T23:00:00Z")).guard == "wallet_card_expired"
    monkeypatch.setattr(expiry, "clock", lambda: datetime(2026, 4, 30, 23, 59, 59, tzinfo=UTC))
    assert reuse_policy().decide(event_with(cards, placed_at="2026-04-30T23:00:00Z")).action == USE_WALLET


def test_order_time_prefers_placed_at_then_updated_then_created():
    doc = order_document()
    doc["data"]["attributes"].update(
        placed_at=None, updated_at="2026-02-01T00:00:00Z", created_at="2026-01-01T00:00:00Z"
    )
    assert order_time(Event.from_document("orders.place", doc)) == datetime(2026, 2, 1, tzinfo=UTC)
    doc["data"]["attributes"]["placed_at"] = "2026-03-01T00:00:00+01:00"
    assert order_time(Event.from_document("orders.place", doc)) == datetime(2026, 2, 28, 23, tzinfo=UTC)
