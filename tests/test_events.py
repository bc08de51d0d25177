import json

import pytest
from builders import order_body, order_document
from conftest import DATA, SECRET, signed_headers

from webhook_app.errors import InvalidPayload, InvalidSignature
from webhook_app.events import Delivery, Event, delivery_identity, json_depth, parse_document
from webhook_app.signing import parse_secrets

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
    "body,match",
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
    "headers,exc",
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
