"""The sandbox's `events` resource: an order's events, `GET /api/events`, and `_trigger`, which sends
an event again through the sender (signed, retried) like any delivery."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from support.sandbox import Api, Receiver, running, signature, webhook_scenario


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hooked(receiver) -> Iterator[Api]:
    scenario = webhook_scenario(receiver.url)
    scenario["clients"] = [
        *scenario.get("clients", []),
        {"client_id": "storefront-id", "client_secret": "storefront-secret", "kind": "sales_channel"},
    ]
    with running(scenario) as server:
        api = Api(server)
        api.get_token()
        yield api
        api.close()


def fire(api: Api, order_id: str, topic: str = "orders.place") -> str:
    r = api.control("POST", "/events", {"topic": topic, "order_ids": [order_id]})
    assert r.status_code == 202, r.text
    return r.json()["events"][0]["id"]


def drain(api: Api) -> None:
    assert api.control("POST", "/sender/drain", {"timeout": 20}).json()["drained"]


def trigger_body(event_id: str, **attributes) -> dict:
    return {"data": {"type": "events", "id": event_id, "attributes": {"_trigger": True, **attributes}}}


def test_an_order_lists_its_events_named_by_topic(hooked):
    first = fire(hooked, "OrdStripeA")
    second = fire(hooked, "OrdStripeA", "orders.approve")
    fire(hooked, "OrdPaypalA")
    listed = hooked.get("/orders/OrdStripeA/events").json()
    assert [(e["id"], e["attributes"]["name"]) for e in listed["data"]] == [
        (first, "orders.place"),
        (second, "orders.approve"),
    ]
    assert listed["meta"]["record_count"] == 2
    one = hooked.get(f"/events/{first}").json()["data"]
    assert one["type"] == "events" and one["attributes"]["name"] == "orders.place"
    assert set(one["attributes"]) == {"name", "created_at", "updated_at", "reference", "reference_origin", "metadata"}
    # linkage only where included, as everywhere
    order = hooked.get("/orders/OrdStripeA").json()["data"]
    assert "data" not in order["relationships"]["events"]
    order = hooked.get("/orders/OrdStripeA?include=events").json()["data"]
    assert [e["id"] for e in order["relationships"]["events"]["data"]] == [first, second]
    by_name = hooked.get("/events?filter[q][name_eq]=orders.approve").json()["data"]
    assert [e["id"] for e in by_name] == [second]
    assert hooked.get("/events?filter[q][foo_eq]=x").status_code == 400
    assert hooked.get("/events/NoSuchEvent").status_code == 404


def test_trigger_sends_the_event_again_signed_through_the_sender(hooked, receiver):
    event_id = fire(hooked, "OrdStripeA")
    drain(hooked)
    r = hooked.patch(f"/events/{event_id}", trigger_body(event_id))
    assert r.status_code == 200, r.text
    assert r.json()["data"]["id"] == event_id
    drain(hooked)
    first, again = receiver.wait_for(2)
    assert again.body == first.body  # nothing changed: the same bytes
    assert again.headers["X-Commercelayer-Signature"] == signature(again.body, "s3cret")
    callbacks = hooked.control("GET", f"/event_callbacks?event_id={event_id}").json()["event_callbacks"]
    assert len(callbacks) == 2 and all(c["event_id"] == event_id for c in callbacks)
    # the order changed in between: the next trigger carries the new state
    hooked.patch_order("OrdStripeA", {"metadata": {"note": "changed"}})
    assert hooked.patch(f"/events/{event_id}", trigger_body(event_id)).status_code == 200
    drain(hooked)
    third = receiver.wait_for(3)[2]
    assert third.body != first.body and json.loads(third.body)["data"]["attributes"]["metadata"] == {"note": "changed"}
    # like any delivery, a failed one is retried
    receiver.answer = lambda call: (500, 0.0) if len(receiver.calls) == 4 else (204, 0.0)
    hooked.patch(f"/events/{event_id}", trigger_body(event_id))
    drain(hooked)
    assert len(receiver.wait_for(5)) == 5
    attempts = hooked.control("GET", f"/event_callbacks?event_id={event_id}").json()["event_callbacks"]
    assert [c["attempt"] for c in attempts][-2:] == [1, 2]


def test_trigger_bodies_are_checked_and_sales_channels_refused(hooked, receiver):
    event_id = fire(hooked, "OrdStripeA")
    drain(hooked)
    bad = hooked.patch(f"/events/{event_id}", trigger_body(event_id, _trigerr=True))
    assert bad.status_code == 422 and bad.json()["errors"][0]["source"]["pointer"] == "/data/attributes/_trigerr"
    wrong_id = hooked.patch(f"/events/{event_id}", trigger_body("Other"))
    assert wrong_id.status_code == 422
    assert hooked.patch("/events/NoSuchEvent", trigger_body("NoSuchEvent")).status_code == 404
    shop = Api(hooked.server)
    try:
        shop.get_token("storefront-id", "storefront-secret")
        refused = shop.patch(f"/events/{event_id}", trigger_body(event_id))
        assert refused.status_code == 401 and "sales channels" in refused.json()["errors"][0]["detail"]
    finally:
        shop.close()
    drain(hooked)
    assert len(receiver.calls) == 1  # none of those sent anything
