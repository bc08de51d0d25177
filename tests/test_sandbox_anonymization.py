"""The sandbox's customer anonymization: the triggers, the statuses, the `customers.anonymization_*`
webhooks (signed, with the customer as Commerce Layer renders it)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from commercelayer_sandbox.anonymization import ANONYMIZED_EMAIL
from support.sandbox import Api, Receiver, running, signature, webhook_scenario

TOPICS = [f"customers.anonymization_{s}" for s in ("started", "completed", "cancelled", "failed")]


@pytest.fixture
def setup() -> Iterator[tuple[Api, Receiver]]:
    receiver = Receiver()
    scenario = webhook_scenario(receiver.url, include=[], topic=TOPICS[0])
    scenario["webhooks"] += [
        {"id": f"HookAnon{n}a", "topic": t, "callback_url": receiver.url, "shared_secret": "s3cret"}
        for n, t in enumerate(TOPICS[1:])
    ]
    with running(scenario) as server:
        api = Api(server)
        api.get_token()
        yield api, receiver
        api.close()
    receiver.close()


def patch_customer(api: Api, cid: str, attrs: dict) -> object:
    return api.patch(f"/customers/{cid}", {"data": {"type": "customers", "id": cid, "attributes": attrs}})


def test_a_request_then_started_and_completed_send_signed_customer_bodies(setup):
    api, receiver = setup
    r = patch_customer(api, "CustBobAaa", {"_request_anonymization": True})
    assert r.status_code == 200, r.text
    attrs = r.json()["data"]["attributes"]
    assert attrs["anonymization_status"] == "requested" and attrs["anonymization_info"]["requested_at"].endswith(" UTC")
    assert patch_customer(api, "CustBobAaa", {"_request_anonymization": True}).status_code == 422  # one at a time
    for step in ("started", "completed"):
        c = api.control(
            "POST",
            "/events",
            {"topic": f"customers.anonymization_{step}", "customer_id": "CustBobAaa", "transition": True},
        )
        assert c.status_code == 202, c.text
        assert c.json()["events"][0]["customer_id"] == "CustBobAaa"
    calls = receiver.wait_for(2)
    assert [c.headers["X-Commercelayer-Topic"] for c in calls] == TOPICS[:2]
    started, completed = (json.loads(c.body) for c in calls)
    for call in calls:
        assert call.headers["X-Commercelayer-Signature"] == signature(call.body, "s3cret")
    assert started["data"]["type"] == "customers" and started["data"]["id"] == "CustBobAaa"
    assert started["data"]["attributes"]["email"] == "bob@example.com"
    assert started["data"]["attributes"]["anonymization_status"] == "started"
    assert completed["data"]["attributes"]["email"] == ANONYMIZED_EMAIL
    assert completed["data"]["attributes"]["anonymization_info"]["completed_at"]
    orders = api.get("/customers/CustBobAaa/orders").json()["data"]
    assert orders and all(o["attributes"]["customer_email"] == ANONYMIZED_EMAIL for o in orders)


def test_cancel_only_an_ongoing_request_and_steps_in_order(setup):
    api, receiver = setup
    bad = api.control("POST", "/events", {"topic": TOPICS[1], "customer_id": "CustBobAaa", "transition": True})
    assert bad.status_code == 400 and "not requested" in bad.text
    assert patch_customer(api, "CustBobAaa", {"_cancel_anonymization": True}).status_code == 422
    assert patch_customer(api, "CustBobAaa", {"_request_anonymization": True}).status_code == 200
    r = patch_customer(api, "CustBobAaa", {"_cancel_anonymization": True})
    assert r.status_code == 200 and r.json()["data"]["attributes"]["anonymization_status"] == "cancelled"
    [call] = receiver.wait_for(1)
    assert call.headers["X-Commercelayer-Topic"] == "customers.anonymization_cancelled"
    assert patch_customer(api, "CustBobAaa", {"email": "x@y.z"}).status_code == 422  # not modelled


def test_webhooks_accept_the_topics_with_customer_includes_only(setup):
    api, _ = setup
    body = {"data": {"type": "webhooks", "attributes": {"topic": TOPICS[1], "callback_url": "https://x.test/h"}}}
    body["data"]["attributes"]["include_resources"] = ["orders"]
    assert api.post("/webhooks", body).status_code == 201
    body["data"]["attributes"]["include_resources"] = ["payment_source"]  # an order's, not a customer's
    assert api.post("/webhooks", body).status_code == 422
