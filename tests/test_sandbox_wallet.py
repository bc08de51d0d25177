"""The wallet per gateway (issue 11 point 5), over real HTTP.

Each gateway's "reusing the payment source" how-to names a prerequisite for saving into the
wallet; without it the save fails. Returning customers pay with the same card on several orders
(several records, one fingerprint), wallets may already hold duplicates, and saving the same card
twice makes a second entry.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.sandbox import Api, running

SAVE = {"_save_payment_source_to_customer_wallet": True}
CUSTOMER = {"id": "CustCaroAa", "email": "carol@example.com"}


def order(oid: str, ptype: str, status: str = "placed", **source) -> dict:
    return {
        "id": oid,
        "customer": CUSTOMER["email"],
        "status": status,
        "payment_source": {"type": ptype, **source},
    }


SCENARIO = {
    "clients": [{"client_id": "c", "client_secret": "s"}],
    "customers": [CUSTOMER],
    "orders": [
        order("OrdBtPendA", "braintree_payments", "pending"),
        order("OrdBtPlace", "braintree_payments"),
        order("OrdAdyNoRd", "adyen_payments", gateway={"payment_request_data": False}),
        order("OrdAdyNoRe", "adyen_payments", gateway={"recurring": False}),
        order("OrdAdyOkay", "adyen_payments"),
        order("OrdCkoNoSr", "checkout_com_payments", gateway={"payment_response_source": False}),
        order("OrdKlaNoAt", "klarna_payments", gateway={"auth_token": ""}),
        order("OrdStOnSes", "stripe_payments", options={"setup_future_usage": "on_session"}),
        # A returning customer paying with the same card on three orders.
        order("OrdCard001", "stripe_payments", card_last4="4242", card_exp_month=4, card_exp_year=2031),
        order("OrdCard002", "stripe_payments", card_last4="4242", card_exp_month=4, card_exp_year=2031),
        order("OrdCard003", "stripe_payments", card_last4="4242", card_exp_month=4, card_exp_year=2031),
    ],
    # Pre-existing duplicates: the first order's card saved twice.
    "customer_payment_sources": [
        {"id": "WalletDup1", "customer": CUSTOMER["email"], "order": "OrdCard001"},
        {"id": "WalletDup2", "customer": CUSTOMER["email"], "order": "OrdCard001"},
    ],
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


def wallet(api: Api) -> list[dict]:
    return api.get(f"/customers/{CUSTOMER['id']}/customer_payment_sources?include=payment_source").json()["data"]


@pytest.mark.parametrize(
    ("order_id", "error", "text"),
    [
        ("OrdBtPlace", "nonce_used", "cannot use a payment_method_nonce more than once"),
        ("OrdAdyNoRd", "no_payment_request_data", "payment_request_data"),
        ("OrdAdyNoRe", "no_recurring_detail_reference", "recurringDetailReference"),
        ("OrdCkoNoSr", "no_payment_response_source", "payment_response"),
        ("OrdKlaNoAt", "no_auth_token", "auth_token"),
        ("OrdStOnSes", "no_setup_future_usage", "off_session"),
    ],
)
def test_gateway_prerequisites_refuse_the_save(api, order_id, error, text):
    r = api.patch_order(order_id, SAVE)
    assert r.status_code == 422
    (err,) = r.json()["errors"]
    assert err["code"] == "VALIDATION_ERROR" and err["meta"]["error"] == error
    assert text in err["detail"]
    assert err["source"]["pointer"] == "/data/attributes/_save_payment_source_to_customer_wallet"
    assert len(wallet(api)) == 2  # the seeded duplicates only


def test_refusal_can_be_a_200_without_an_entry(api):
    api.control("PUT", "/config", {"wallet_save_refusal": "no_entry"})
    r = api.patch_order("OrdBtPlace", SAVE, include="available_customer_payment_sources")
    assert r.status_code == 200
    linkage = r.json()["data"]["relationships"]["available_customer_payment_sources"]["data"]
    assert {e["id"] for e in linkage} == {"WalletDup1", "WalletDup2"}
    stats = api.control("GET", "/stats").json()["wallet"]
    assert stats["save_refused_without_entry"] == 1 and stats.get("entries_created", 0) == 0


def test_braintree_saves_before_placing_not_after(api):
    r = api.patch_order("OrdBtPendA", {**SAVE, "_place": True})
    assert r.status_code == 200, r.text  # saved first, then placed, in one PATCH
    assert r.json()["data"]["attributes"]["status"] == "placed"
    again = api.patch_order("OrdBtPendA", SAVE)
    assert again.status_code == 422 and again.json()["errors"][0]["meta"]["error"] == "nonce_used"
    shown = api.get("/orders/OrdBtPendA?include=payment_source").json()["included"][0]
    assert shown["attributes"]["payment_method_nonce"]


def test_adyen_with_its_prerequisites_saves_with_the_recurring_reference(api):
    r = api.patch_order("OrdAdyOkay", SAVE)
    assert r.status_code == 200
    entry = next(e for e in wallet(api) if e["relationships"]["payment_source"]["data"]["type"] == "adyen_payments")
    source = api.get("/orders/OrdAdyOkay/payment_source").json()["data"]
    extra = source["attributes"]["payment_response"]["additionalData"]
    assert extra["recurring.recurringDetailReference"] == entry["attributes"]["payment_source_token"]
    assert extra["recurring.shopperReference"] == entry["attributes"]["customer_token"]
    assert source["attributes"]["payment_request_data"]["shopperReference"] == entry["attributes"]["customer_token"]


def test_same_card_on_several_orders_is_several_records_with_one_fingerprint(api):
    sources = []
    for oid in ("OrdCard001", "OrdCard002", "OrdCard003"):
        doc = api.get(f"/orders/{oid}?include=payment_source").json()
        (source,) = doc["included"]
        sources.append(source)
    assert len({s["id"] for s in sources}) == 3
    cards = [s["attributes"]["payment_method"]["card"] for s in sources]
    assert len({c["fingerprint"] for c in cards}) == 1
    assert {(c["last4"], c["exp_month"], c["exp_year"]) for c in cards} == {("4242", 4, 2031)}
    instruments = [s["attributes"]["payment_instrument"] for s in sources]
    assert all(
        i
        == {
            "issuer_type": "card",
            "card_type": "visa",
            "card_last_digits": "4242",
            "card_expiry_month": "4",
            "card_expiry_year": "2031",
        }
        for i in instruments
    )
    assert len({s["attributes"]["payment_method"]["id"] for s in sources}) == 3


def test_seeded_duplicates_and_saving_the_same_card_again(api):
    entries = wallet(api)
    assert [e["id"] for e in entries] == ["WalletDup1", "WalletDup2"]
    assert {e["relationships"]["payment_source"]["data"]["id"] for e in entries} == {
        api.get("/orders/OrdCard001?include=payment_source").json()["included"][0]["id"]
    }
    for oid in ("OrdCard002", "OrdCard002"):  # not idempotent: twice is two entries
        assert api.patch_order(oid, SAVE).status_code == 200
    entries = wallet(api)
    assert len(entries) == 4
    assert len({e["attributes"]["name"] for e in entries}) == 1  # XXXX-XXXX-XXXX-4242
    stats = api.control("GET", "/stats").json()["wallet"]
    assert stats["entries_created"] == 2 and stats["duplicates"] == 1
    assert api.delete("/customer_payment_sources/WalletDup2").status_code == 204
    assert len(wallet(api)) == 3
