"""policy/wallet.py against the sandbox's documented answers: for every wallet-capable gateway, an
entry saved from an order's payment source is recognised without linkage (by gateway token), and
an answer that cannot tell is "unknown", never "not in the wallet"."""

from __future__ import annotations

import pytest
from support.sandbox import Api, example, running

from webhook_app.events import Event
from webhook_app.policy import wallet

ORDERS = {
    "stripe_payments": "OrdStripeA",
    "adyen_payments": "OrdAdyenAa",
    "axerve_payments": "OrdAxerveA",
    "braintree_payments": "OrdBrainAa",
    "checkout_com_payments": "OrdCkoAaaa",
    "external_payments": "OrdExtAaaa",
    "klarna_payments": "OrdKlarnaA",
}


@pytest.fixture(scope="module")
def saved():
    """The example scenario with each gateway's order saved into its customer's wallet."""
    scenario = example()
    for order in scenario["orders"]:
        if order.get("id") == ORDERS["braintree_payments"]:
            # a Braintree nonce is one-time-use: the sandbox refuses a save once the order is
            # placed, so this one is saved as Commerce Layer's own checkout does, before placing
            order["status"] = "pending"
    with running(scenario) as server:
        api = Api(server)
        api.get_token()
        for order_id in ORDERS.values():
            r = api.patch_order(order_id, {"_save_payment_source_to_customer_wallet": True})
            assert r.status_code == 200, (order_id, r.text)
        yield api
        api.close()


@pytest.mark.parametrize("source_type", sorted(ORDERS))
def test_entry_is_recognised_by_token_without_linkage(saved, source_type):
    order_id = ORDERS[source_type]
    r = saved.get(f"/orders/{order_id}?include=payment_source,available_customer_payment_sources")
    event = Event.from_document("orders.place", r.json())
    assert event.payment_source is not None and event.payment_source.type == source_type
    assert event.wallet and all(e.linkage("payment_source") is None for e in event.wallet)  # as documented
    look = wallet.look_up(event)
    assert look.in_wallet and look.how == "token", (source_type, event.payment_source.attributes)


@pytest.mark.parametrize("source_type", sorted(ORDERS))
def test_entry_is_recognised_by_linkage_with_the_dotted_path(saved, source_type):
    order_id = ORDERS[source_type]
    r = saved.get(f"/orders/{order_id}?include={','.join(wallet.READ_INCLUDES)}")
    look = wallet.look_up(Event.from_document("orders.place", r.json()))
    assert look.in_wallet and look.how == "linkage"


def test_a_body_without_the_wallet_or_the_source_is_unknown(saved):
    r = saved.get("/orders/OrdStripeA?include=payment_source")
    look = wallet.look_up(Event.from_document("orders.place", r.json()))
    assert not look.in_wallet and not look.known
    r = saved.get("/orders/OrdStripeA?include=available_customer_payment_sources")
    look = wallet.look_up(Event.from_document("orders.place", r.json()))
    assert not look.in_wallet and not look.known  # entries without linkage, source not included
