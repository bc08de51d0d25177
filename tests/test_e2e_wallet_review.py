"""End to end against the sandbox, real processes: a user's review of the wallet's life.

`webhook-app serve` (enforce) and the sandbox as processes, real SQLite, the sandbox over HTTP.
Each test was seen failing on the code before its fix:

- a card expiring this month is still reused; one that expired since the order was last updated
  (pending since last month) is never reused, at the later of the order's time and now;
- `forget` while an order's job is being retried: the job ends skipped, not dead-lettered;
- a delivery made before an anonymization and arriving after it (a retry) is erased;
- a card renewed by its issuer (same fingerprint, new expiry) is saved, and is no duplicate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import textwrap
import time
from collections.abc import Iterator

import pytest
import requests
from support.procs import wait_until
from test_e2e_wallet_life import CLIENT, MARKET, POLICY, SHARED_SECRET, Setup, card, running

from webhook_app.policy import load_policy
from webhook_app.store import DeliveryFilter
from webhook_app.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

NOW = time.gmtime()
THIS_MONTH = (NOW.tm_mon, NOW.tm_year)
LAST_MONTH = (12, NOW.tm_year - 1) if NOW.tm_mon == 1 else (NOW.tm_mon - 1, NOW.tm_year)
# an order updated (pending) in the card's last valid month, its job run now (a later month)
RENEWED = {"card_exp_month": 12, "card_exp_year": NOW.tm_year + 4}
IN_LAST_MONTH = f"{LAST_MONTH[1]:04d}-{LAST_MONTH[0]:02d}-15T12:00:00Z"


def scenario(callback_url: str, includes: list[str]) -> dict:
    names = ["gil", "hal", "ivy", "jan", "kay", "lou", "max"]
    stripe = {"type": "stripe_payments"}
    return {
        "sandbox": {
            "token_ttl": 3600,
            "api_limits": ["1000/60"],
            "endpoint_limits": ["500/10"],
            "sender": {"timeout": 5, "max_retries": 3, "backoff_base": 0.2, "concurrency": 2},
        },
        "clients": [CLIENT],
        "markets": [{"id": MARKET, "code": "eu", "name": "Europe"}],
        "customers": [{"id": f"Cust{e.title()}", "email": f"{e}@example.com"} for e in names],
        "orders": [
            # pending since last month: its only card expired at the end of last month
            {
                "id": "OrdGilPend",
                "customer": "gil@example.com",
                "status": "pending",
                "payment_source": stripe,
                "created_at": IN_LAST_MONTH,
                "updated_at": IN_LAST_MONTH,
            },
            # a card that expires this month is still valid
            {"id": "OrdHalPend", "customer": "hal@example.com", "status": "pending", "payment_source": stripe},
            # pending since last month, one card expired since then and one valid
            {
                "id": "OrdIvyPend",
                "customer": "ivy@example.com",
                "status": "pending",
                "payment_source": stripe,
                "created_at": IN_LAST_MONTH,
                "updated_at": IN_LAST_MONTH,
            },
            # saved on orders.place; forgotten while its job is still being retried
            {"id": "OrdJanPla", "customer": "jan@example.com", "payment_source": {**stripe, "card_last4": "4004"}},
            {"id": "OrdKayPla", "customer": "kay@example.com", "payment_source": {**stripe, "card_last4": "4005"}},
            # an earlier order paid with the card before the issuer renewed it (saved: WalLouOld)
            {
                "id": "OrdLouOld",
                "customer": "lou@example.com",
                "status": "approved",
                "payment_source": {
                    **stripe,
                    "card_last4": "4006",
                    "card_fingerprint": "fpLouCard",
                    "card_exp_month": LAST_MONTH[0],
                    "card_exp_year": LAST_MONTH[1],
                },
            },
            # the service saves the old card itself (its card claim), then the renewed one
            {
                "id": "OrdMaxOld",
                "customer": "max@example.com",
                "payment_source": {
                    **stripe,
                    "card_last4": "4007",
                    "card_fingerprint": "fpMaxCard",
                    "card_exp_month": LAST_MONTH[0],
                    "card_exp_year": LAST_MONTH[1],
                },
            },
            {
                "id": "OrdMaxNew",
                "customer": "max@example.com",
                "payment_source": {**stripe, "card_last4": "4007", "card_fingerprint": "fpMaxCard", **RENEWED},
            },
            # the card the issuer renewed: same number (same Stripe fingerprint), a new expiry
            {
                "id": "OrdLouPla",
                "customer": "lou@example.com",
                "payment_source": {**stripe, "card_last4": "4006", "card_fingerprint": "fpLouCard", **RENEWED},
            },
        ],
        "customer_payment_sources": [
            {"id": "WalGilLastM", "customer": "gil@example.com", **card(*LAST_MONTH, "4000")},
            {"id": "WalHalThisM", "customer": "hal@example.com", **card(*THIS_MONTH, "4001")},
            {
                "id": "WalIvyValid",
                "customer": "ivy@example.com",
                "created_at": "2025-01-01T00:00:00Z",
                **card(12, 2040, "4002"),
            },
            {
                "id": "WalIvyLastM",
                "customer": "ivy@example.com",
                "created_at": "2025-06-01T00:00:00Z",
                **card(*LAST_MONTH, "4003"),
            },
            {
                "id": "WalLouOld",
                "customer": "lou@example.com",
                "order": "OrdLouOld",
                "created_at": "2024-01-01T00:00:00Z",
            },
        ],
        "webhooks": [
            {
                "id": f"Hook{n}",
                "topic": topic,
                "callback_url": callback_url,
                "include_resources": includes if topic.startswith("orders.") else [],
                "shared_secret": SHARED_SECRET,
            }
            for n, topic in enumerate(
                (
                    "orders.pending",
                    "orders.place",
                    "customers.anonymization_started",
                    "customers.anonymization_completed",
                )
            )
        ],
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("wallet-review")
    (tmp / "policy.toml").write_text(textwrap.dedent(POLICY))
    yield from running(tmp, scenario, load_policy(tmp / "policy.toml").required_includes())


def test_a_card_expiring_this_month_is_still_reused(setup):
    setup.fire("orders.pending", "OrdHalPend")
    (hal,) = setup.decisions("OrdHalPend")
    assert (hal["action"], hal["outcome"], hal["wallet_entry_id"]) == ("use_wallet_source", "applied", "WalHalThisM")


def test_a_card_that_expired_since_the_order_was_last_updated_is_never_reused(setup):
    setup.fire("orders.pending", "OrdGilPend", "OrdIvyPend")
    (gil,) = setup.decisions("OrdGilPend")
    (ivy,) = setup.decisions("OrdIvyPend")
    print(gil, ivy)
    assert (gil["action"], gil["outcome"], gil["guard"]) == ("skip", "guarded", "wallet_card_expired"), gil
    assert (ivy["outcome"], ivy["wallet_entry_id"]) == ("applied", "WalIvyValid"), ivy
    patches = setup.control("GET", "/requests?route=orders.patch")["requests"]
    used = {p["path"].rsplit("/", 1)[-1]: p["body"]["data"]["attributes"] for p in patches}
    assert "OrdGilPend" not in used


def test_forget_while_a_job_is_in_flight_ends_it_skipped_not_dead_lettered(setup):
    # Commerce Layer answers 503 for a while: the save's job is retried, its body still stored.
    setup.control("PUT", "/faults", {"rules": [{"route": "orders.patch", "error_share": 1, "seconds": 600}]})
    try:
        setup.control("POST", "/events", {"topic": "orders.place", "order_ids": ["OrdJanPla"]})
        assert setup.control("POST", "/sender/drain", {"timeout": 60})["drained"]
        store = SQLiteStore(str(setup.tmp / "svc.db"))
        try:
            wait_until(lambda: _job(store, "OrdJanPla")["attempts"] >= 1, timeout=30, what="a first failed attempt")
            r = setup.cli("forget", "--customer", "CustJan")
            assert r.returncode == 0 and "1 deliveries" in r.stdout, (r.stdout, r.stderr)
        finally:
            store.close()
    finally:
        requests.delete(setup.sb_url + "/_sandbox/faults", timeout=10)
    setup.settle()
    store = SQLiteStore(str(setup.tmp / "svc.db"))
    try:
        job = _job(store, "OrdJanPla")
    finally:
        store.close()
    assert job["state"] == "done", job  # was: dead, "stored body no longer parses: ... zero-length ..."
    (jan,) = setup.decisions("OrdJanPla")
    assert (jan["rule"], jan["action"], jan["outcome"]) == ("erased", "skip", "skipped"), jan
    assert "erased" in jan["reason"]
    metrics = requests.get(setup.svc_url + "/metrics", timeout=10).text
    assert "webhook_app_dead_letters_total 0.0" in metrics
    patches = setup.control("GET", "/requests?route=orders.patch")["requests"]
    assert all(p["status"] == 503 for p in patches if p["path"].endswith("/OrdJanPla"))


def _job(store: SQLiteStore, order_id: str) -> dict:
    with store._tx() as c:
        row = c.one(
            "SELECT j.state, j.attempts, j.last_error FROM jobs j JOIN deliveries d ON d.id = j.delivery_id"
            " WHERE d.order_id = ?",
            (order_id,),
        )
    return dict(row) if row else {"attempts": 0}


def test_a_delivery_made_before_an_anonymization_and_arriving_after_it_is_erased(setup):
    setup.fire("orders.place", "OrdKayPla")
    store = SQLiteStore(str(setup.tmp / "svc.db"))
    try:
        (first,) = store.list_deliveries(DeliveryFilter(order_id="OrdKayPla", limit=5))
        full = store.get_delivery(first.id)
        assert full is not None and b"kay@example.com" in full.body
        before = full.body
    finally:
        store.close()
    for step in ("started", "completed"):
        setup.control(
            "POST",
            "/events",
            {"topic": f"customers.anonymization_{step}", "customer_id": "CustKay", "transition": True},
        )
        assert setup.control("POST", "/sender/drain", {"timeout": 60})["drained"]
        setup.settle()
    # Commerce Layer retries an event made before the anonymization with the payload made then
    # (the service was down, or answered too late): it arrives now, name and e-mail included.
    late = before.replace(b'"metadata":{}', b'"metadata":{"late":true}', 1)
    assert late != before
    sig = base64.b64encode(hmac.new(SHARED_SECRET.encode(), late, hashlib.sha256).digest()).decode()
    r = requests.post(
        setup.svc_url + "/webhooks/commercelayer",
        data=late,
        headers={
            "Content-Type": "application/json",
            "X-CommerceLayer-Topic": "orders.place",
            "X-CommerceLayer-Signature": sig,
        },
        timeout=10,
    )
    assert r.status_code == 202, r.text
    setup.settle()
    store = SQLiteStore(str(setup.tmp / "svc.db"))
    try:
        kept = []
        for d in store.list_deliveries(DeliveryFilter(limit=200)):
            full = store.get_delivery(d.id)
            assert full is not None
            if b"kay@example.com" in full.body:
                kept.append((d.id, d.topic))
    finally:
        store.close()
    assert kept == []  # was: the late delivery, kept for WEBHOOK_APP_RETAIN_BODIES_DAYS
    decisions = setup.decisions("OrdKayPla")
    assert decisions[0]["rule"] == "erased" and "CustKay was anonymized" in decisions[0]["reason"], decisions


def test_a_renewed_card_same_number_new_expiry_is_saved_and_not_a_duplicate(setup):
    # Stripe's fingerprint names the card number: the renewed card has the same one as the
    # wallet's expired entry. Guarding it as "already in the wallet" left only the expired entry,
    # and `wallet duplicates --delete-extra --yes` would delete the renewed one, keeping the oldest.
    setup.fire("orders.place", "OrdLouPla")
    (lou,) = setup.decisions("OrdLouPla")
    assert (lou["action"], lou["outcome"]) == ("save_payment_source", "applied"), lou
    wallet = [w for w in setup.control("GET", "/state")["customer_payment_sources"] if w["customer_id"] == "CustLou"]
    assert len(wallet) == 2
    r = setup.cli("wallet", "duplicates", "--customer", "CustLou", "--delete-extra", "--yes")
    assert r.returncode == 0, r.stderr
    assert "0 extra entries" in r.stderr and r.stdout == "", (r.stdout, r.stderr)


def test_a_renewed_card_is_saved_after_the_service_saved_the_old_one(setup):
    setup.fire("orders.place", "OrdMaxOld")
    setup.fire("orders.place", "OrdMaxNew")
    for order in ("OrdMaxOld", "OrdMaxNew"):
        (d,) = setup.decisions(order)
        assert (d["action"], d["outcome"]) == ("save_payment_source", "applied"), d
    wallet = [w for w in setup.control("GET", "/state")["customer_payment_sources"] if w["customer_id"] == "CustMax"]
    assert len(wallet) == 2
