"""The webhook sender: signed compact bodies, retries, circuit breaker, event callbacks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from commercelayer_sandbox import schema
from support.sandbox import Api, Receiver, running, signature, webhook_scenario


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hooked(receiver) -> Iterator[Api]:
    """A sandbox whose one webhook (orders.place, HookTestAa) posts to the test receiver."""
    with running(webhook_scenario(receiver.url)) as server:
        api = Api(server)
        api.get_token()
        yield api
        api.close()


def trigger(api: Api, order_id: str | list[str], topic: str = "orders.place", **kw) -> list[dict]:
    ids = order_id if isinstance(order_id, list) else [order_id]
    r = api.control("POST", "/events", {"topic": topic, "order_ids": ids, **kw})
    assert r.status_code == 202, r.text
    return r.json()["events"]


def drain(api: Api, timeout: float = 20) -> None:
    r = api.control("POST", "/sender/drain", {"timeout": timeout})
    assert r.status_code == 200 and r.json() == {"drained": True, "pending": 0}


def failing(status: int = 500):
    return lambda call: (status, 0.0)


def test_delivery_is_signed_compact_and_shaped_like_get(hooked, receiver):
    events = trigger(hooked, "OrdStripeA")
    assert events[0]["webhook_ids"] == ["HookTestAa"]
    drain(hooked)
    (call,) = receiver.calls
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["X-Commercelayer-Topic"] == "orders.place"
    assert call.headers["X-Commercelayer-Signature"] == signature(call.body, "s3cret")
    doc = json.loads(call.body)
    assert json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() == call.body
    assert doc["data"]["links"]["self"] == "/api/orders/OrdStripeA"
    assert doc["data"]["relationships"]["customer"]["links"]["related"] == "/api/orders/OrdStripeA/customer"
    assert {(i["type"], i["id"]) for i in doc["included"]} == {
        ("customers", "CustAliceA"),
        ("stripe_payments", "PsStripeAa"),
    }
    assert "data" not in doc["data"]["relationships"]["market"]  # not in include_resources
    assert schema.errors("orderResponse", doc, relaxed=True) == []
    answer = hooked.get("/orders/OrdStripeA?include=customer,payment_source").json()
    assert answer["data"]["attributes"] == doc["data"]["attributes"]
    callbacks = hooked.control("GET", "/event_callbacks").json()["event_callbacks"]
    assert [(c["response_code"], c["succeeded"], c["attempt"]) for c in callbacks] == [(204, True, 1)]
    assert callbacks[0]["body"].encode() == call.body
    listed = hooked.get("/webhooks/HookTestAa/last_event_callbacks").json()["data"]
    assert listed[0]["attributes"]["response_code"] == "204"
    assert listed[0]["attributes"]["callback_url"] == receiver.url
    assert listed[0]["attributes"]["payload"] == doc


def test_failures_are_retried_ten_times_then_dropped(hooked, receiver):
    receiver.answer = failing(500)
    trigger(hooked, "OrdStripeA")
    drain(hooked)
    assert len(receiver.calls) == 11  # the first call and 10 retries
    assert len({c.body for c in receiver.calls}) == 1
    callbacks = hooked.control("GET", "/event_callbacks").json()["event_callbacks"]
    assert [c["attempt"] for c in callbacks] == list(range(1, 12))
    assert all(c["response_code"] == 500 and not c["succeeded"] for c in callbacks)
    hook = hooked.get("/webhooks/HookTestAa").json()["data"]["attributes"]
    assert hook["circuit_failure_count"] == 11 and hook["circuit_state"] == "closed"
    stats = hooked.control("GET", "/stats").json()["sender"]
    assert stats["attempts"] == 11 and stats["retries_scheduled"] == 10 and stats["gave_up"] == 1


def test_backoff_is_exponential_by_default_config(hooked, receiver):
    hooked.control(
        "PUT",
        "/config",
        {"sender": {"backoff_base": 0.05, "backoff_factor": 2.0, "max_retries": 3}},
    )
    receiver.answer = failing(503)
    trigger(hooked, "OrdStripeA")
    drain(hooked)
    gaps = [b.at - a.at for a, b in zip(receiver.calls, receiver.calls[1:], strict=False)]
    assert len(gaps) == 3
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2


def test_a_success_resets_the_consecutive_failure_count(hooked, receiver):
    answers = iter([500, 502, 204])
    receiver.answer = lambda call: (next(answers), 0.0)
    trigger(hooked, "OrdStripeA")
    drain(hooked)
    assert len(receiver.calls) == 3
    assert hooked.get("/webhooks/HookTestAa").json()["data"]["attributes"]["circuit_failure_count"] == 0


def test_slow_answers_are_timeouts(receiver):
    receiver.answer = lambda call: (204, 0.5)
    scenario = webhook_scenario(receiver.url, timeout=0.15)
    with running(scenario, sender={"max_retries": 1, "backoff_base": 0.001}) as server:
        api = Api(server)
        trigger(api, "OrdStripeA")
        drain(api)
        callbacks = api.control("GET", "/event_callbacks").json()["event_callbacks"]
        api.close()
    assert len(callbacks) == 2
    assert all(c["response_code"] is None and "timeout" in c["response_message"] for c in callbacks)


def test_circuit_opens_after_30_consecutive_failures_and_reset_closes_it(hooked, receiver):
    receiver.answer = failing(500)
    hooked.control("PUT", "/config", {"sender": {"max_retries": 0, "concurrency": 1}})
    trigger(hooked, ["OrdStripeA"] * 35)
    drain(hooked)
    assert len(receiver.calls) == 30
    hook = hooked.get("/webhooks/HookTestAa").json()["data"]["attributes"]
    assert hook["circuit_state"] == "open" and hook["circuit_failure_count"] == 30
    trigger(hooked, "OrdAdyenAa")
    drain(hooked)
    assert len(receiver.calls) == 30  # nothing is sent while open
    stats = hooked.control("GET", "/stats").json()["sender"]
    assert stats["circuits_opened"] == 1 and stats["skipped_circuit_open"] == 6
    r = hooked.patch(
        "/webhooks/HookTestAa",
        {"data": {"type": "webhooks", "id": "HookTestAa", "attributes": {"_reset_circuit": True}}},
    )
    assert r.json()["data"]["attributes"]["circuit_state"] == "closed"
    assert r.json()["data"]["attributes"]["circuit_failure_count"] == 0
    receiver.answer = failing(200)
    trigger(hooked, "OrdAdyenAa")
    drain(hooked)
    assert len(receiver.calls) == 31


def test_an_open_circuit_drops_pending_retries(hooked, receiver):
    receiver.answer = failing(500)
    hooked.control("PUT", "/config", {"sender": {"circuit_threshold": 3}})
    trigger(hooked, "OrdStripeA")
    drain(hooked)
    assert len(receiver.calls) == 3  # not 11: the retries after the circuit opened were not sent
    assert hooked.get("/webhooks/HookTestAa").json()["data"]["attributes"]["circuit_state"] == "open"


def test_triggering_again_resends_the_same_bytes(hooked, receiver):
    first = trigger(hooked, "OrdStripeA")
    second = trigger(hooked, "OrdStripeA")
    drain(hooked)
    assert first[0]["id"] != second[0]["id"]
    assert len(receiver.calls) == 2 and receiver.calls[0].body == receiver.calls[1].body
    hooked.patch_order("OrdStripeA", {"reference": "changed"})
    trigger(hooked, "OrdStripeA")
    drain(hooked)
    assert receiver.calls[2].body != receiver.calls[0].body


def test_lost_answer_causes_a_redelivery(hooked, receiver):
    r = hooked.control("PUT", "/faults", {"sender": {"lose_answer_share": 1.0, "requests": 1}})
    assert r.status_code == 200
    trigger(hooked, "OrdStripeA")
    drain(hooked)
    assert len(receiver.calls) == 2 and receiver.calls[0].body == receiver.calls[1].body
    callbacks = hooked.control("GET", "/event_callbacks").json()["event_callbacks"]
    assert [(c["lost_answer"], c["response_code"], c["succeeded"]) for c in callbacks] == [
        (True, None, False),
        (False, 204, True),
    ]
    assert "timeout" in callbacks[0]["response_message"]
    assert hooked.control("GET", "/stats").json()["sender"]["lost_answers"] == 1


def test_patch_place_fires_orders_place(hooked, receiver):
    r = hooked.patch_order("OrdDraftAa", {"_place": True})
    assert r.status_code == 200
    drain(hooked)
    (call,) = receiver.calls
    assert json.loads(call.body)["data"]["attributes"]["status"] == "placed"


def test_event_with_transition_moves_the_order(hooked, receiver):
    trigger(hooked, "OrdDraftAa", transition=True)
    drain(hooked)
    attrs = json.loads(receiver.calls[0].body)["data"]["attributes"]
    assert attrs["status"] == "placed" and "placed_at" in attrs
    assert hooked.get("/orders/OrdDraftAa").json()["data"]["attributes"]["status"] == "placed"


def test_other_topics_reach_only_their_webhooks(hooked, receiver):
    trigger(hooked, "OrdStripeA", topic="orders.approve")
    drain(hooked)
    assert receiver.calls == []
    r = hooked.control("POST", "/events", {"topic": "orders.bogus", "order_id": "OrdStripeA"})
    assert r.status_code == 400
    r = hooked.control("POST", "/events", {"topic": "orders.place", "order_id": "NoSuchOrd"})
    assert r.status_code == 404


def test_destroy_sends_only_the_id(receiver):
    with running(webhook_scenario(receiver.url, topic="orders.destroy")) as server:
        api = Api(server)
        trigger(api, "OrdWireAaa", topic="orders.destroy", transition=True)
        drain(api)
        api.get_token()
        gone = api.get("/orders/OrdWireAaa").status_code
        api.close()
    doc = json.loads(receiver.calls[0].body)
    assert doc["data"]["id"] == "OrdWireAaa" and "attributes" not in doc["data"]
    assert gone == 404


def test_many_events_are_sent_concurrently(hooked, receiver):
    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow(call):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.02)
        with lock:
            in_flight[0] -= 1
        return 204, 0.0

    receiver.answer = slow
    ids = [o["id"] for o in hooked.control("GET", "/state").json()["orders"]] * 10
    started = time.monotonic()
    trigger(hooked, ids)
    drain(hooked)
    assert len(receiver.calls) == len(ids) == 140
    assert peak[0] > 1
    assert time.monotonic() - started < 140 * 0.02  # faster than one at a time


def test_per_webhook_timeout_override_through_faults(hooked, receiver):
    receiver.answer = lambda call: (204, 0.4)
    r = hooked.control("PUT", "/faults", {"sender": {"webhook_timeouts": {"HookTestAa": 0.1}}})
    assert r.json()["sender"]["webhook_timeouts"] == {"HookTestAa": 0.1}
    hooked.control("PUT", "/config", {"sender": {"max_retries": 0}})
    trigger(hooked, "OrdStripeA")
    drain(hooked)
    (callback,) = hooked.control("GET", "/event_callbacks").json()["event_callbacks"]
    assert callback["response_code"] is None and "within 0.1 s" in callback["response_message"]
    hooked.control("DELETE", "/faults")
    trigger(hooked, "OrdStripeA")
    drain(hooked)
    last = hooked.control("GET", "/event_callbacks").json()["event_callbacks"][-1]
    assert last["response_code"] == 204  # back to the 2 s test timeout


class _Trickler:
    """A raw HTTP endpoint that answers 204, one byte every `pace` seconds: each read is quick,
    the whole answer slow."""

    ANSWER = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    def __init__(self, pace: float) -> None:
        import socket

        self.pace = pace
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hooks"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                for i in range(len(self.ANSWER)):
                    conn.sendall(self.ANSWER[i : i + 1])
                    time.sleep(self.pace)

    def close(self) -> None:
        self.sock.close()


def test_the_timeout_bounds_the_whole_answer_not_each_read():
    """FACTS: "the endpoint has 5 seconds to answer with a 2xx". requests' read timeout bounds each
    read of the socket, so an answer trickled in over 3 s counted as a success within 0.5 s."""
    trickler = _Trickler(pace=0.05)  # 66 bytes: about 3.3 s, no read waits more than 0.05 s
    try:
        scenario = webhook_scenario(trickler.url, timeout=0.5)
        with running(scenario, sender={"max_retries": 0}) as server:
            api = Api(server)
            trigger(api, "OrdStripeA")
            drain(api)
            callbacks = api.control("GET", "/event_callbacks").json()["event_callbacks"]
            api.close()
    finally:
        trickler.close()
    (callback,) = callbacks
    assert callback["succeeded"] is False
    assert callback["response_code"] is None and "timeout" in callback["response_message"]


def test_deliveries_come_from_the_configured_source_address(receiver):
    """Commerce Layer calls from published addresses (FACTS.md, "Other facts"): the sandbox's
    sender can play one on loopback, so a receiver's allowlist is tested against it."""
    with running(webhook_scenario(receiver.url), sender={"source_address": "127.0.0.2"}) as server:
        api = Api(server)
        trigger(api, "OrdStripeA")
        drain(api)
        assert api.control("PUT", "/config", {"sender": {"source_address": "example"}}).status_code == 400
        assert api.control("PUT", "/config", {"sender": {"source_address": ""}}).status_code == 200
        trigger(api, "OrdStripeA")
        drain(api)
        api.close()
    assert [c.remote_addr for c in receiver.calls] == ["127.0.0.2", "127.0.0.1"]


def test_deliveries_can_arrive_out_of_order(receiver):
    """Ordering is not documented (FACTS.md: do not rely on it): `reorder_seconds` delays each
    first delivery at random (seeded), so a receiver can be tested against events out of order."""
    orders = ["OrdStripeA", "OrdGuestSt", "OrdPaypalA", "OrdStripeA", "OrdGuestSt", "OrdPaypalA"]
    topics = ["orders.place", "orders.approve"]
    sent = [(t, o) for t in topics for o in orders[:3]]
    for reorder, in_order in ((0.0, True), (0.5, False)):
        receiver.calls.clear()
        scenario = webhook_scenario(receiver.url, topic="orders.place")
        scenario["webhooks"].append({**scenario["webhooks"][0], "id": "HookTestBb", "topic": "orders.approve"})
        with running(scenario, sender={"reorder_seconds": reorder, "concurrency": 1}) as server:
            api = Api(server)
            for topic in topics:
                trigger(api, orders[:3], topic=topic)
            drain(api)
            api.close()
        got = [(c.headers["X-Commercelayer-Topic"], json.loads(c.body)["data"]["id"]) for c in receiver.calls]
        assert sorted(got) == sorted(sent)
        assert (got == sent) is in_order
