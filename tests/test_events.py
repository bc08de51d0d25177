import json
from pathlib import Path

import pytest
from support import DATA, SECRET, signed_headers
from support.builders import order_body, order_document

from webhook_app.errors import InvalidPayload, InvalidSignature
from webhook_app.events import Delivery, Event, delivery_identity, json_depth, parse_document
from webhook_app.policy import parse_policy, readiness
from webhook_app.signing import parse_secrets
from webhook_app.store import DeliveryFilter
from webhook_app.topics import KNOWN_TOPICS, ORDER_TOPICS
from webhook_app.worker import Worker

SECRETS = parse_secrets(f"main:{SECRET}")


def test_from_http_verifies_then_parses_real_sample():
    body = (DATA / "orders.place.guest-wire-transfer.json").read_bytes()
    d = Delivery.from_http(signed_headers(body), body, secrets=SECRETS)
    assert d.topic == "orders.place" and d.order_id == "wBXVhZOmXO" and d.is_order
    assert d.secret_label == "main"
    assert d.identity == delivery_identity("orders.place", body)


def test_signature_checked_before_parsing():
    # An unsigned body that is not even JSON must be refused for its signature, not its shape.
    with pytest.raises(InvalidSignature):
        Delivery.from_http({"X-CommerceLayer-Topic": "orders.place"}, b"\xff\xfe not json", secrets=SECRETS)


def test_identity_depends_on_topic_and_every_byte():
    body = order_body()
    assert delivery_identity("orders.place", body) != delivery_identity("orders.approve", body)
    assert delivery_identity("orders.place", body) != delivery_identity("orders.place", body + b" ")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\xff\xfe", "UTF-8"),
        (b"{", "not valid JSON"),
        (b"[]", "object"),
        (b'{"data":[]}', "data"),
        (b'{"data":{"type":"orders"}}', "data.id"),
        (b'{"data":{"type":"orders","id":5}}', "data.id"),
        (b'{"data":{"type":"orders","id":""}}', "data.id"),
        (b'{"data":{"id":"x","type":"orders"},"included":{}}', "included"),
        (b'{"data":{"id":"x","type":"orders"},"included":[{"type":"a"}]}', "included"),
        (b'{"data":{"id":"x","type":"orders","attributes":[]}}', "attributes"),
        (b'{"data":{"id":"x","type":"orders","n":' + b"9" * 5000 + b"}}", "not valid JSON"),
    ],
)
def test_bad_documents_are_refused_with_a_reason(body, match):
    with pytest.raises(InvalidPayload, match=match):
        parse_document(body)


def test_nesting_depth_limit():
    deep = b'{"data":{"id":"x","type":"orders","attributes":{"a":' + b"[" * 100 + b"]" * 100 + b"}}}"
    with pytest.raises(InvalidPayload, match="deeper"):
        parse_document(deep, max_depth=64)
    very_deep = b'{"data":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidPayload):
        parse_document(very_deep)
    assert json_depth({"a": [1, {"b": []}]}) == 4


@pytest.mark.parametrize(
    ("headers", "exc"),
    [
        ({}, InvalidSignature),
        ({"X-CommerceLayer-Topic": "orders place"}, InvalidPayload),
    ],
)
def test_topic_header_required_and_checked(headers, exc):
    body = order_body()
    h = signed_headers(body)
    h.pop("X-CommerceLayer-Topic")
    if headers:
        h.update(headers)
    else:
        h.pop("X-CommerceLayer-Signature")
    with pytest.raises(exc):
        Delivery.from_http(h, body, secrets=SECRETS)
    h = signed_headers(body)
    del h["X-CommerceLayer-Topic"]
    with pytest.raises(InvalidPayload, match="X-CommerceLayer-Topic"):
        Delivery.from_http(h, body, secrets=SECRETS)


def test_order_topic_must_carry_an_order():
    body = json.dumps({"data": {"id": "c1", "type": "customers"}}).encode()
    with pytest.raises(InvalidPayload, match="customers"):
        Delivery.from_http(signed_headers(body, "orders.place"), body, secrets=SECRETS)
    d = Delivery.from_http(signed_headers(body, "customers.create"), body, secrets=SECRETS)
    assert not d.is_order and d.order_id is None


def test_credentials_headers_are_not_stored():
    body = order_body()
    h = {**signed_headers(body), "Authorization": "Bearer abc", "Cookie": "s=1", "X-Trace": "t"}
    d = Delivery.from_http(h, body, secrets=SECRETS)
    assert "Authorization" not in d.headers and "Cookie" not in d.headers and d.headers["X-Trace"] == "t"
    # the other usual places a proxy or gateway puts a token (forget.md: "minus ... tokens")
    tokens = {"X-Api-Key": "k-123", "X-Auth-Token": "t-456", "x-api-key": "k-789", "Set-Cookie": "s=2"}
    d = Delivery.from_http({**signed_headers(body), **tokens}, body, secrets=SECRETS)
    assert not set(tokens) & set(d.headers), d.headers


def test_event_resolves_included_resources():
    doc = order_document(
        "o1",
        customer_id="c1",
        source_type="adyen_payments",
        source_id="ps1",
        line_items=[{"sku_code": "A"}, {"sku_code": "B"}],
        wallet=[{"id": "w1", "source_id": "ps0"}],
    )
    e = Event.from_document("orders.place", doc)
    assert e.order_id == "o1" and e.customer_id == "c1" and e.customer.attributes["email"] == "c1@example.com"
    assert e.payment_source_type == "adyen_payments" and e.payment_source.id == "ps1"
    assert [li.attributes["sku_code"] for li in e.line_items] == ["A", "B"]
    assert e.market.attributes["code"] == "eu"
    assert [w.id for w in e.wallet] == ["w1"]


def test_event_without_wallet_relationship_has_none_and_source_type_from_details():
    e = Event.from_body("orders.place", (DATA / "orders.place.guest-wire-transfer.json").read_bytes())
    assert e.wallet is None and e.is_guest and e.payment_source_type == "wire_transfers"
    doc = order_document(source_type=None)
    doc["data"]["attributes"]["payment_source_details"] = {"type": "stripe_payment"}
    assert Event.from_document("orders.place", doc).payment_source_type == "stripe_payments"


def test_raw_json_depth_matches_the_decoded_depth():
    import random

    from webhook_app.events import raw_json_depth

    cases = [
        b"{}",
        b"[]",
        b"1",
        b'"a[{"',
        b'{"a":"\\\\"}',
        b'{"a\\"[":[[["]"]]]}',
        b'[{"a":[1,{"b":[]}]}]',
        '{"é":["{"]}'.encode(),
        b'["\\\\\\"[", ["\\\\", "\\\\\\\\"]]',
        # empty strings side by side with strings that hold brackets (the `""` shortcut)
        b'["","[",""]',
        b'{"":"","a":"]","b":[""]}',
        b'[["",""],"{",[[""]],"]"]',
    ]
    rng = random.Random(5)
    alphabet = 'ab"\\[]{}é\n'

    def value(depth):
        r = rng.random()
        if depth > 6 or r < 0.3:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(6)))
        if r < 0.4:
            return rng.random()
        if r < 0.7:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {"".join(rng.choice(alphabet) for _ in range(3)): value(depth + 1) for _ in range(rng.randrange(4))}

    for _ in range(2000):
        v = value(0)
        cases += [json.dumps(v).encode(), json.dumps(v, ensure_ascii=False, indent=1).encode()]
    for raw in cases:
        assert raw_json_depth(raw) == json_depth(json.loads(raw)), raw


def test_raw_json_depth_of_deep_narrow_and_wide_documents():
    """Peeling innermost pairs counts the depth of any shape: long chains (where it finishes
    bracket by bracket), many of them side by side, wide flat arrays and a mix."""
    from webhook_app.events import raw_json_depth

    chain = b"[" * 700 + b"]" * 700
    shapes = [
        chain,
        b"[" + b",".join([b"[" * 64 + b"]" * 64] * 300) + b"]",
        b"[" + b",".join([b"[]"] * 5000) + b"]",
        b'{"a":' + chain + b',"b":[' + b",".join([b'{"c":[1]}'] * 500) + b"]}",
        b"[" + b",".join(b"[" * n + b"]" * n for n in range(1, 80)) + b"]",
        b'[[[[[{"x":"[[[["}]]]],' + b"{}," * 50 + b"1]",
    ]
    for raw in shapes:
        assert raw_json_depth(raw) == json_depth(json.loads(raw)), raw[:80]
    # Only called on a body orjson accepted, but an unbalanced one must still end (no pass peels it).
    for unbalanced in (b"[[[", b"][", b"[[]", b"{" * 20):
        assert isinstance(raw_json_depth(unbalanced), int)


@pytest.mark.parametrize("limit", [1, 2, 5, 64])
def test_depth_limit_accepts_exactly_the_limit_and_refuses_one_more(limit):
    def doc(depth):  # `data` and its `attributes` are two levels; `a` adds the rest
        inner = b"[" * (depth - 3) + b"]" * (depth - 3) if depth > 3 else b"1"
        return b'{"data":{"id":"x","type":"orders","attributes":{"a":' + inner + b"}}}"

    for depth in (3, 4, 10, 63, 64, 65, 66):
        raw = doc(depth)
        assert json_depth(json.loads(raw)) == depth
        if depth > limit:
            with pytest.raises(InvalidPayload, match=f"deeper than {limit}"):
                parse_document(raw, max_depth=limit)
        else:
            assert parse_document(raw, max_depth=limit)["data"]["id"] == "x"


# --- topics: every one Commerce Layer sends is accepted, invented ones are refused ----------------

REFERENCE_TOPICS = Path("/work/shared/commercelayer/topics.json")


def _intake(settings_factory, sqlite_store, clock, policy=None):
    from webhook_app.web import create_app

    return create_app(settings_factory(), store=sqlite_store, clock=clock, policy=policy).test_client()


def test_every_topic_commerce_layer_sends_is_accepted_through_the_intake(settings_factory, sqlite_store, clock):
    # Topics the dashboard offers beyond the docs' order list (FACTS.md, "Webhook deliveries"): an
    # operator who subscribes to one must not have every delivery refused (and the circuit opened).
    client = _intake(settings_factory, sqlite_store, clock)
    for n, topic in enumerate(("orders.placing", "orders.start_editing", "orders.tagged")):
        body = order_body(f"ordNew{n}")
        r = client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body, topic))
        assert r.status_code == 202 and r.json["status"] == "accepted", (topic, r.json)
    # An anonymization is queued for the worker (it erases the customer's bodies); others are ignored.
    body = json.dumps({"data": {"id": "cusA1", "type": "customers", "attributes": {}}}).encode()
    r = client.post(
        "/webhooks/commercelayer", data=body, headers=signed_headers(body, "customers.anonymization_completed")
    )
    assert r.status_code == 202 and r.json["status"] == "accepted", r.json
    for topic, rtype in (
        ("customers.create", "customers"),
        ("order_subscriptions.last_run_failed", "order_subscriptions"),
        ("shipments.deliver", "shipments"),
    ):
        body = json.dumps({"data": {"id": "resA1", "type": rtype, "attributes": {}}}).encode()
        r = client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body, topic))
        assert r.status_code == 200 and r.json["status"] == "ignored", (topic, r.json)
    stored = {d.topic: d.status for d in sqlite_store.list_deliveries(DeliveryFilter())}
    assert stored["orders.placing"] == "queued" and stored["customers.anonymization_completed"] == "queued"
    assert stored["order_subscriptions.last_run_failed"] == "ignored"
    # The amplification guard stands: one captured body re-posted under invented topics is refused.
    body = order_body("ordNew0")
    for topic in ("orders.bogus", "orders.placed", "customers.teleport", "foo.bar"):
        r = client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body, topic))
        assert r.status_code == 400, topic
    assert len(sqlite_store.list_deliveries(DeliveryFilter())) == 7


def test_a_rule_on_a_new_order_topic_is_decided_by_the_worker(settings_factory, sqlite_store, clock):
    policy = parse_policy(
        {
            "default": {"action": "skip"},
            "rules": [
                {
                    "name": "while-editing",
                    "topics": ["orders.start_editing"],
                    "action": "skip",
                    "when": {"field": "order.guest", "equals": False},
                }
            ],
        }
    )
    client = _intake(settings_factory, sqlite_store, clock, policy)
    body = order_body("ordEdit1", status="editing")
    r = client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body, "orders.start_editing"))
    assert r.status_code == 202, r.json
    worker = Worker(store=sqlite_store, policy=policy, settings=settings_factory(), client=None, clock=clock)
    [outcome] = worker.drain()
    assert outcome.state == "done" and outcome.decision is not None and outcome.decision.rule == "while-editing"


def test_the_shipped_topics_are_commerce_layers_list():
    assert len(KNOWN_TOPICS) == 187 and len(ORDER_TOPICS) == 22
    assert {"orders.placing", "orders.tagged", "customers.anonymization_completed"} <= KNOWN_TOPICS
    if REFERENCE_TOPICS.exists():
        assert sorted(KNOWN_TOPICS) == sorted(json.loads(REFERENCE_TOPICS.read_text())["topics"])


def test_the_sandbox_fires_the_order_topics_the_package_knows():
    from commercelayer_sandbox import orders as sandbox_orders

    assert sorted(sandbox_orders.ORDER_TOPICS) == sorted(ORDER_TOPICS)


def test_gateway_readiness_knows_only_real_order_topics():
    # A misspelt topic in the "after placing" list would silently drop a Braintree warning.
    assert set(ORDER_TOPICS) >= readiness.AFTER_PLACING
    assert {"orders.placing", "orders.start_editing", "orders.create_subscriptions"} <= readiness.AFTER_PLACING


def test_configured_topics_add_to_the_known_ones(settings_factory):
    s = settings_factory(extra_topics=("shipments.teleport",))
    assert "shipments.teleport" in s.accepted_topics and s.accepted_topics >= KNOWN_TOPICS
