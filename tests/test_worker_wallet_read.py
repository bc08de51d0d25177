"""The worker's own read of the wallet (a webhook that did not include it) never reuses an expired
card: the real worker and client against the sandbox over HTTP, a real SQLite file."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import SECRET, signed_headers
from support.sandbox import API, Api, running

from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.events import Delivery
from webhook_app.policy import parse_policy
from webhook_app.signing import parse_secrets
from webhook_app.worker import Worker

CLIENT = {"client_id": "wallet-read-client", "client_secret": "wallet-read-client-secret-0123"}
REUSE = parse_policy(
    {
        "version": 1,
        "default": {"action": "skip"},
        "rules": [{"name": "reuse", "action": "use_wallet_source", "strategy": "newest"}],
    }
)


def _entry(ident: str, customer: str, created: str, month: int, year: int, last4: str) -> dict[str, Any]:
    return {
        "id": ident,
        "customer": customer,
        "created_at": created,
        "payment_source_type": "stripe_payments",
        "card_last4": last4,
        "card_exp_month": month,
        "card_exp_year": year,
    }


def scenario() -> dict[str, Any]:
    stripe = {"type": "stripe_payments"}
    return {
        "clients": [CLIENT],
        "markets": [{"id": "MktEuropeA", "code": "eu", "name": "Europe"}],
        "customers": [
            {"id": "CustAnnaAa", "email": "anna@example.com"},
            {"id": "CustBoboBb", "email": "bobo@example.com"},
        ],
        "orders": [
            {"id": "OrdAnnaPnd", "customer": "anna@example.com", "status": "pending", "payment_source": stripe},
            {"id": "OrdBoboPnd", "customer": "bobo@example.com", "status": "pending", "payment_source": stripe},
        ],
        "customer_payment_sources": [
            _entry("WalAnnaGood", "anna@example.com", "2025-01-01T00:00:00Z", 12, 2040, "4242"),
            _entry("WalAnnaOld1", "anna@example.com", "2026-01-01T00:00:00Z", 1, 2024, "1881"),  # the newest, expired
            _entry("WalBoboOld2", "bobo@example.com", "2025-06-01T00:00:00Z", 2, 2024, "0005"),
        ],
    }


@pytest.fixture
def sandbox() -> Iterator[Api]:
    with running(scenario()) as server:
        api = Api(server)
        api.get_token(**CLIENT)
        yield api
        api.close()


def deliver(api: Api, store: Any, order_id: str) -> None:
    """The order as a webhook that did not include the wallet would carry it."""
    r = api.get(f"/orders/{order_id}?include=customer,payment_source,market", headers=api.headers(Accept=API))
    assert r.status_code == 200, r.text
    assert "available_customer_payment_sources" not in {i["type"] for i in r.json().get("included", [])}
    body = json.dumps(r.json()).encode()
    store.record_delivery(
        Delivery.from_http(signed_headers(body, "orders.pending"), body, secrets=parse_secrets(f"main:{SECRET}")),
        now=time.time(),
    )


def test_the_worker_reading_the_wallet_passes_over_expired_cards_and_skips_when_none_is_left(
    sandbox, sqlite_store, settings_factory
):
    settings = settings_factory(
        mode="enforce",
        cl_api_base=sandbox.server.api_url,
        cl_auth_url=sandbox.server.auth_url,
        cl_client_id=CLIENT["client_id"],
        cl_client_secret=CLIENT["client_secret"],
    )
    client = CommerceLayerClient.from_settings(settings)
    try:
        deliver(sandbox, sqlite_store, "OrdAnnaPnd")
        deliver(sandbox, sqlite_store, "OrdBoboPnd")
        worker = Worker(store=sqlite_store, policy=REUSE, settings=settings, client=client)
        anna, bobo = worker.drain()  # in the order delivered
    finally:
        client.close()
    assert anna.outcome == "applied" and anna.decision.wallet_entry_id == "WalAnnaGood"
    assert bobo.outcome == "guarded" and bobo.decision.guard == "wallet_card_expired"
    assert "WalBoboOld2" in bobo.decision.reason
    patches = sandbox.control("GET", "/requests?route=orders.patch").json()["requests"]
    assert len(patches) == 1 and "OrdAnnaPnd" in patches[0]["path"]
