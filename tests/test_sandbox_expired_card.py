"""A saved card that has expired fails when it is reused (FACTS.md, "Other facts"), over real HTTP.

Where it fails is not documented: `expired_card_refusal` says (`place`, the default: the charge,
`_place`/`_authorize`; `use`: `_customer_payment_source_id` itself; `none`: never).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.sandbox import Api, running

CUSTOMER = {"id": "CustEvaAaa", "email": "eva@example.com"}


def entry(wid: str, month: int, year: int, last4: str) -> dict:
    return {
        "id": wid,
        "customer": CUSTOMER["email"],
        "payment_source_type": "stripe_payments",
        "card_last4": last4,
        "card_exp_month": month,
        "card_exp_year": year,
    }


SCENARIO = {
    "clients": [{"client_id": "c", "client_secret": "s"}],
    "customers": [CUSTOMER],
    "orders": [
        {
            "id": f"OrdPend00{n}",
            "customer": CUSTOMER["email"],
            "status": "pending",
            "payment_source": {"type": "stripe_payments"},
        }
        for n in range(3)
    ],
    "customer_payment_sources": [entry("WalExpired", 1, 2024, "1881"), entry("WalValidAa", 12, 2040, "4242")],
}


@pytest.fixture(scope="module")
def server() -> Iterator:
    with running(SCENARIO) as srv:
        yield srv


@pytest.fixture
def api(server) -> Iterator[Api]:
    client = Api(server)
    assert client.control("POST", "/reset", {}).status_code == 200
    client.get_token("c", "s")
    yield client
    client.close()


def use(api: Api, order_id: str, wallet_id: str):
    return api.patch_order(order_id, {"_customer_payment_source_id": wallet_id})


def test_an_expired_saved_card_fails_when_the_order_is_placed(api):
    assert use(api, "OrdPend000", "WalExpired").status_code == 200
    r = api.patch_order("OrdPend000", {"_place": True})
    assert r.status_code == 422, r.text
    (err,) = r.json()["errors"]
    assert err["code"] == "VALIDATION_ERROR" and err["meta"]["error"] == "card_expired"
    assert err["source"]["pointer"] == "/data/attributes/_place"
    assert "1881" in err["detail"] and "01/2024" in err["detail"]
    assert api.get("/orders/OrdPend000").json()["data"]["attributes"]["status"] == "pending"
    assert api.control("GET", "/stats").json()["wallet"]["expired_card_refused"] == 1
    # the valid card places
    assert use(api, "OrdPend001", "WalValidAa").status_code == 200
    assert api.patch_order("OrdPend001", {"_place": True}).status_code == 200


def test_refused_on_use_when_so_configured(api):
    assert api.control("PUT", "/config", {"expired_card_refusal": "use"}).status_code == 200
    r = use(api, "OrdPend002", "WalExpired")
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["meta"]["error"] == "card_expired"
    assert err["source"]["pointer"] == "/data/attributes/_customer_payment_source_id"
    assert use(api, "OrdPend002", "WalValidAa").status_code == 200


def test_none_is_the_kinder_choice_and_must_be_asked_for(api):
    assert api.control("PUT", "/config", {"expired_card_refusal": "none"}).status_code == 200
    assert use(api, "OrdPend000", "WalExpired").status_code == 200
    assert api.patch_order("OrdPend000", {"_place": True}).status_code == 200
    bad = api.control("PUT", "/config", {"expired_card_refusal": "later"})
    assert bad.status_code == 400
