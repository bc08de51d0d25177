"""The emulated API over real HTTP: tokens, media types, errors, orders, wallets, webhooks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from commercelayer_sandbox import schema
from commercelayer_sandbox.model import PAYMENT_SOURCE_TYPES
from support.builders import WALLET_TYPES
from support.sandbox import API, Api, running

ALL_INCLUDES = "customer,payment_source,market,line_items,available_customer_payment_sources"


@pytest.fixture(scope="module")
def server() -> Iterator:
    with running() as srv:
        yield srv


@pytest.fixture
def api(server) -> Iterator[Api]:
    """A client with a fresh token on a sandbox reset to the example scenario."""
    client = Api(server)
    assert client.control("POST", "/reset", {}).status_code == 200
    client.control("PUT", "/config", {"check_responses": True})
    client.get_token()
    yield client
    client.close()


def errors_of(r) -> list[dict]:
    body = r.json()
    assert set(body) == {"errors"}
    for e in body["errors"]:
        assert {"title", "detail", "code", "status", "source", "meta"} <= set(e)
        assert e["status"] == str(r.status_code)
    return body["errors"]


# -- OAuth -----------------------------------------------------------------------------------------


def test_token_answer_has_commerce_layer_fields(api):
    r = api.session.post(
        api.server.auth_url,
        json={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client-id",
            "client_secret": "sandbox-client-secret",
            "scope": "market:code:us",
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "created_at"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 7200 and body["scope"] == "market:code:us"
    assert abs(body["created_at"] - time.time()) < 5


def test_token_accepts_form_encoding(api):
    r = api.session.post(
        api.server.auth_url,
        data={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client-id",
            "client_secret": "sandbox-client-secret",
        },
    )
    assert r.status_code == 200 and r.json()["scope"] == "market:code:eu"


@pytest.mark.parametrize(("client_id", "secret"), [("sandbox-client-id", "wrong"), ("nobody", "sandbox-client-secret")])
def test_wrong_credentials_are_401_in_errors_shape(api, client_id, secret):
    r = api.session.post(
        api.server.auth_url,
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert r.status_code == 401
    assert errors_of(r)[0]["code"] == "INVALID_CLIENT"


def test_missing_unknown_and_expired_tokens_are_401(api):
    assert api.get("/orders/OrdStripeA").status_code == 200
    no_auth = {"Accept": API}
    r = api.get("/orders/OrdStripeA", headers=no_auth)
    assert r.status_code == 401 and errors_of(r)[0]["code"] == "INVALID_TOKEN"
    r = api.get("/orders/OrdStripeA", headers={**no_auth, "Authorization": "Bearer not-a-token"})
    assert r.status_code == 401
    expired = api.control("POST", "/tokens/expire", {}).json()
    assert expired["expired"] >= 1
    r = api.get("/orders/OrdStripeA")
    assert r.status_code == 401 and "expired" in errors_of(r)[0]["detail"]
    api.get_token()
    assert api.get("/orders/OrdStripeA").status_code == 200


def test_tokens_expire_after_their_lifetime(api):
    api.control("PUT", "/config", {"token_ttl": 0.3})
    token = api.get_token()
    assert api.get("/orders/OrdStripeA").status_code == 200
    time.sleep(0.4)
    r = api.get("/orders/OrdStripeA")
    assert r.status_code == 401, token
    assert api.control("GET", "/stats").json()["tokens"]["issued"] == 2


def test_request_log_redacts_credentials(api):
    api.get("/orders/OrdStripeA")
    log = api.control("GET", "/requests").json()["requests"]
    token_call = next(r for r in log if r["route"] == "token")
    assert token_call["body"]["client_secret"] == "[redacted]"
    get_call = next(r for r in log if r["route"] == "orders.get")
    assert get_call["headers"]["Authorization"] == "[redacted]"
    assert get_call["status"] == 200 and get_call["method"] == "GET"
    assert api.token not in json.dumps(log)


# -- media types, 404 ------------------------------------------------------------------------------


def test_wrong_accept_is_406(api):
    r = api.get("/orders/OrdStripeA", headers=api.headers(Accept="application/json"))
    assert r.status_code == 406 and errors_of(r)[0]["code"] == "NOT_ACCEPTABLE"


def test_body_with_wrong_content_type_is_415_and_changes_nothing(api):
    body = {"data": {"type": "orders", "id": "OrdStripeA", "attributes": {"reference": "x"}}}
    r = api.patch("/orders/OrdStripeA", body, headers=api.headers(**{"Content-Type": "application/json"}))
    assert r.status_code == 415 and errors_of(r)[0]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert api.get("/orders/OrdStripeA").json()["data"]["attributes"]["reference"] is None


def test_unknown_records_are_404_record_not_found(api):
    for path in (
        "/orders/NoSuchOrd",
        "/webhooks/NoSuchHook",
        "/customers/NoSuchCus/customer_payment_sources",
    ):
        r = api.get(path)
        assert r.status_code == 404, path
        assert errors_of(r)[0]["code"] == "RECORD_NOT_FOUND"
    r = api.patch_order("NoSuchOrd", {"reference": "x"})
    assert r.status_code == 404


# -- 422 on PATCH bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "pointer"),
    [
        ({"guest": "yes"}, "/data/attributes/guest"),
        (
            {"_save_payment_source_to_customer_wallet": "true"},
            "/data/attributes/_save_payment_source_to_customer_wallet",
        ),
        ({"_customer_payment_source_id": 42}, "/data/attributes/_customer_payment_source_id"),
        ({"metadata": "not an object"}, "/data/attributes/metadata"),
        (
            {"_save_payment_source_to_customer_walet": True},
            "/data/attributes/_save_payment_source_to_customer_walet",
        ),
    ],
)
def test_bad_patch_bodies_are_422_with_pointer(api, attributes, pointer):
    r = api.patch_order("OrdStripeA", attributes)
    assert r.status_code == 422
    errs = errors_of(r)
    assert errs[0]["code"] == "VALIDATION_ERROR"
    assert pointer in [e["source"]["pointer"] for e in errs]


def test_id_mismatch_and_wrong_type_are_422(api):
    r = api.patch("/orders/OrdStripeA", {"data": {"type": "orders", "id": "OrdAdyenAa", "attributes": {}}})
    assert r.status_code == 422 and errors_of(r)[0]["source"]["pointer"] == "/data/id"
    r = api.patch("/orders/OrdStripeA", {"data": {"type": "customers", "id": "OrdStripeA", "attributes": {}}})
    assert r.status_code == 422 and errors_of(r)[0]["source"]["pointer"] == "/data/type"
    r = api.patch("/orders/OrdStripeA", {"nodata": True})
    assert r.status_code == 422


def test_the_control_api_refuses_what_a_web_page_can_send_across_sites(api):
    """A page in the developer's browser can POST without a preflight only with no body, a form or
    text/plain: each is 415 and changes nothing (the token still works, the orders are all there);
    application/json needs a preflight the sandbox never approves, and an empty one is 400."""
    control = api.server.url + "/_sandbox"
    orders = len(api.control("GET", "/state").json()["orders"])
    api.control("POST", "/events", {"topic": "orders.place", "order_id": "OrdStripeA"})
    events = len(api.control("GET", "/events").json()["events"])
    simple = [
        ("/reset", {}),
        ("/tokens/expire", {"data": "a=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
        ("/tokens/expire", {"data": b"{}", "headers": {"Content-Type": "text/plain"}}),
        ("/reset", {"data": b'{"empty": true}', "headers": {"Content-Type": "multipart/form-data; boundary=x"}}),
        ("/events", {"data": b'{"topic": "orders.place", "order_id": "OrdStripeA"}'}),
    ]
    for path, kw in simple:
        r = api.session.post(control + path, **kw)
        assert r.status_code == 415, (path, kw, r.status_code)
        assert errors_of(r)[0]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    for body in (b"", b"{nope", b"null"):
        r = api.session.post(control + "/reset", data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and errors_of(r)[0]["code"] == "BAD_REQUEST"
    r = api.session.put(control + "/config", data=b'{"token_ttl": 0.01}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert api.get("/orders/OrdStripeA").status_code == 200  # the token was not expired
    assert len(api.control("GET", "/state").json()["orders"]) == orders  # not reset (nor emptied)
    assert len(api.control("GET", "/events").json()["events"]) == events  # no event triggered
    assert api.control("GET", "/config").json()["token_ttl"] != 0.01
    assert api.control("POST", "/tokens/expire", {}).json()["expired"] >= 1  # JSON is taken


@pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("0.0.0.0", True)])
def test_the_sandbox_warns_on_one_line_when_not_bound_to_loopback(tmp_path, host, warned):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "commercelayer_sandbox", "--host", host, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening on" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    lines = [line for line in err.splitlines() if "warning" in line]
    if warned:
        assert len(lines) == 1 and f"listening on {host}, not loopback" in lines[0] and "/_sandbox/" in lines[0]
    else:
        assert lines == [], err


def test_invalid_json_is_400(api):
    r = api.session.patch(api.server.api_url + "/orders/OrdStripeA", data=b"{nope", headers=api.headers())
    assert r.status_code == 400 and errors_of(r)[0]["code"] == "BAD_REQUEST"


def without_trace(doc):
    """A document without its per-answer trace ids (every answer has a new one)."""
    text = json.dumps(doc)
    for trace in {doc["meta"]["trace_id"]}:
        text = text.replace(trace, "")
    return json.loads(text)


def test_refused_patch_changes_nothing(api):
    before = api.get("/orders/OrdStripeA").json()
    r = api.patch_order("OrdStripeA", {"reference": "changed", "guest": 3})
    assert r.status_code == 422
    assert without_trace(api.get("/orders/OrdStripeA").json()) == without_trace(before)


# -- the wallet ------------------------------------------------------------------------------------


def test_wallet_save_creates_one_entry_with_linkage(api):
    r = api.patch_order(
        "OrdStripeA",
        {"_save_payment_source_to_customer_wallet": True},
        include="available_customer_payment_sources.payment_source,available_customer_payment_sources.customer",
    )
    assert r.status_code == 200
    doc = r.json()
    linkage = doc["data"]["relationships"]["available_customer_payment_sources"]["data"]
    assert len(linkage) == 1 and linkage[0]["type"] == "customer_payment_sources"
    (entry,) = [i for i in doc["included"] if i["type"] == "customer_payment_sources"]
    assert entry["id"] == linkage[0]["id"]
    attrs = entry["attributes"]
    assert attrs["name"] == "XXXX-XXXX-XXXX-4242"
    assert attrs["customer_token"] == "cus_CustAliceA"
    assert attrs["payment_source_token"] == "pm_PsStripeAa"
    assert {"created_at", "updated_at", "reference", "metadata"} <= set(attrs)
    assert entry["relationships"]["payment_source"]["data"] == {
        "type": "stripe_payments",
        "id": "PsStripeAa",
    }
    assert entry["relationships"]["customer"]["data"] == {"type": "customers", "id": "CustAliceA"}
    # Included resources keep Commerce Layer's nulls (the seed's example has "reference": null);
    # the official schema has no nullable, so only the non-null attributes are checked.
    assert attrs["reference"] is None
    non_null = {**entry, "attributes": {k: v for k, v in attrs.items() if v is not None}}
    assert not schema.errors("customerPaymentSourceResponse", {"data": non_null}, relaxed=True)
    state = api.control("GET", "/state").json()
    assert [w["customer_id"] for w in state["customer_payment_sources"]].count("CustAliceA") == 1
    wallet = api.get("/customers/CustAliceA/customer_payment_sources").json()
    assert [w["id"] for w in wallet["data"]] == [entry["id"]]
    # Without the dotted include, the entry carries links only (as Commerce Layer answers).
    assert all("data" not in rel for rel in wallet["data"][0]["relationships"].values())
    filtered = api.get("/customer_payment_sources?filter[q][customer_id_eq]=CustAliceA").json()
    assert [w["id"] for w in filtered["data"]] == [entry["id"]]
    stats = api.control("GET", "/stats").json()["wallet"]
    assert stats["save_flags"] == 1 and stats["entries_created"] == 1 and stats["duplicates"] == 0


def test_second_save_of_same_source_creates_a_visible_duplicate(api):
    for _ in range(2):
        assert api.patch_order("OrdAdyenAa", {"_save_payment_source_to_customer_wallet": True}).status_code == 200
    entries = api.get("/customers/CustAliceA/customer_payment_sources?include=payment_source").json()["data"]
    sources = [e["relationships"]["payment_source"]["data"]["id"] for e in entries]
    assert len(sources) == 2 and sources[0] == sources[1]
    stats = api.control("GET", "/stats").json()["wallet"]
    assert stats["save_flags"] == 2 and stats["entries_created"] == 2 and stats["duplicates"] == 1


@pytest.mark.parametrize(
    ("order_id", "error"),
    [
        ("OrdGuestSt", "guest"),
        ("OrdGuestWi", "guest"),
        ("OrdNoCustA", "no_customer"),
        ("OrdPaypalA", "no_wallet_flow"),
        ("OrdSatispA", "no_wallet_flow"),
        ("OrdWireAaa", "no_wallet_flow"),
    ],
)
def test_wallet_save_refusals(api, order_id, error):
    r = api.patch_order(order_id, {"_save_payment_source_to_customer_wallet": True})
    assert r.status_code == 422
    (err,) = errors_of(r)
    assert err["meta"]["error"] == error
    assert err["source"]["pointer"] == "/data/attributes/_save_payment_source_to_customer_wallet"
    if error == "guest":
        assert "Access denied" in err["detail"]
    assert len(api.control("GET", "/state").json()["customer_payment_sources"]) == 1  # Bob's seeded one
    stats = api.control("GET", "/stats").json()["wallet"]
    assert stats["save_flags"] == 1 and stats["save_refused"] == 1


def test_every_wallet_type_can_be_saved(api):
    # Braintree nonces are one-time: a placed order's nonce is spent, so its save is refused;
    # an order saved before it is placed can be saved (see test_sandbox_wallet.py).
    refused = api.patch_order("OrdBrainAa", {"_save_payment_source_to_customer_wallet": True})
    assert refused.status_code == 422 and errors_of(refused)[0]["meta"]["error"] == "nonce_used"
    pending = {
        "orders": [
            {
                "id": "OrdBrainPe",
                "customer": "bob@example.com",
                "status": "pending",
                "payment_source": {"type": "braintree_payments", "card_last4": "1881"},
            }
        ]
    }
    assert api.control("POST", "/scenario?mode=merge", pending).status_code == 200
    wallet_orders = [
        "OrdStripeA",
        "OrdAdyenAa",
        "OrdAxerveA",
        "OrdBrainPe",
        "OrdCkoAaaa",
        "OrdExtAaaa",
        "OrdKlarnaA",
    ]
    for oid in wallet_orders:
        assert api.patch_order(oid, {"_save_payment_source_to_customer_wallet": True}).status_code == 200, oid
    types = {w["payment_source"]["type"] for w in api.control("GET", "/state").json()["customer_payment_sources"]}
    assert types == set(WALLET_TYPES)


def test_customer_payment_source_id_switches_the_payment_source(api):
    r = api.patch_order("OrdWireAaa", {"_customer_payment_source_id": "WalletBobA"}, include="payment_source")
    assert r.status_code == 200
    doc = r.json()
    linkage = doc["data"]["relationships"]["payment_source"]["data"]
    entry = next(w for w in api.control("GET", "/state").json()["customer_payment_sources"] if w["id"] == "WalletBobA")
    # The order gets a payment source record of its own, made from the entry's tokens.
    assert linkage["type"] == entry["payment_source"]["type"] == "stripe_payments"
    assert linkage["id"] != entry["payment_source"]["id"]
    assert doc["data"]["attributes"]["payment_source_details"]["type"] == "stripe_payment"
    method = doc["included"][0]["attributes"]["payment_method"]
    assert method["card"]["last4"] == "0077"
    assert method["id"] == entry["payment_source_token"]
    assert method["customer"] == entry["customer_token"]
    assert api.control("GET", "/stats").json()["wallet"]["use_applied"] == 1


@pytest.mark.parametrize(
    ("order_id", "entry", "error"),
    [
        ("OrdStripeA", "WalletBobA", "not_owned"),  # Alice's order, Bob's card
        ("OrdGuestSt", "WalletBobA", "not_owned"),
        ("OrdWireAaa", "NoSuchWall", "not_found"),
    ],
)
def test_customer_payment_source_id_refusals(api, order_id, entry, error):
    r = api.patch_order(order_id, {"_customer_payment_source_id": entry})
    assert r.status_code == 422
    (err,) = errors_of(r)
    assert err["meta"]["error"] == error
    assert err["source"]["pointer"] == "/data/attributes/_customer_payment_source_id"
    assert api.control("GET", "/stats").json()["wallet"]["use_refused"] == 1


def test_place_trigger_moves_a_draft_and_refuses_twice(api):
    r = api.patch_order("OrdDraftAa", {"_place": True})
    assert r.status_code == 200
    attrs = r.json()["data"]["attributes"]
    assert attrs["status"] == "placed" and "placed_at" in attrs and attrs["editable"] is False
    again = api.patch_order("OrdDraftAa", {"_place": True})
    assert again.status_code == 422 and errors_of(again)[0]["meta"]["error"] == "invalid_transition"


def test_relationship_updates_are_refused_as_not_modelled(api):
    body = {
        "data": {
            "type": "orders",
            "id": "OrdStripeA",
            "attributes": {},
            "relationships": {"market": {"data": {"type": "markets", "id": "MarketUsAa"}}},
        }
    }
    r = api.patch("/orders/OrdStripeA", body)
    assert r.status_code == 422 and errors_of(r)[0]["meta"]["error"] == "not_modelled"


# -- the official schema ---------------------------------------------------------------------------


def _orders_by_type(api) -> dict[str, str]:
    out = {}
    for o in api.control("GET", "/state").json()["orders"]:
        if o["payment_source"]:
            out.setdefault(o["payment_source"]["type"], o["id"])
    assert set(out) == PAYMENT_SOURCE_TYPES
    return out


def test_answers_validate_against_the_official_order_response(api):
    for ptype, oid in _orders_by_type(api).items():
        plain = api.get(f"/orders/{oid}").json()
        assert schema.errors("orderResponse", plain) == [], ptype
        assert all("data" not in rel for rel in plain["data"]["relationships"].values())
        # Nulls are sent as null, as in real bodies (the schema's conflict (b)).
        assert plain["data"]["attributes"]["reference_origin"] is None
        full = api.get(f"/orders/{oid}?include={ALL_INCLUDES}").json()
        assert schema.errors("orderResponse", full, relaxed=True) == [], ptype
        # The official, unrelaxed schema rejects real linkage (plural types, arrays): conflict (a).
        assert schema.errors("orderResponse", full) != []
        assert full["data"]["relationships"]["payment_source"]["data"]["type"] == ptype
        assert isinstance(full["data"]["relationships"]["line_items"]["data"], list)
        patched = api.patch_order(oid, {"metadata": {"checked": ptype}}).json()
        assert schema.errors("orderResponse", patched) == [], ptype
        patched_full = api.patch_order(oid, {"reference": f"ref-{ptype}"}, include=ALL_INCLUDES).json()
        assert schema.errors("orderResponse", patched_full, relaxed=True) == [], ptype
        types = {i["type"] for i in patched_full["included"]}
        assert {"markets", "line_items", ptype} <= types


def test_wallet_answers_validate_after_a_save(api):
    r = api.patch_order("OrdKlarnaA", {"_save_payment_source_to_customer_wallet": True}, include=ALL_INCLUDES)
    assert schema.errors("orderResponse", r.json(), relaxed=True) == []
    listing = api.get(f"/orders?include={ALL_INCLUDES}&page[size]=25").json()
    assert schema.errors("orderResponseList", listing, relaxed=True) == []
    assert schema.errors("orderResponseList", api.get("/orders").json()) == []


def test_order_shape_matches_the_real_sample(api):
    doc = api.get(f"/orders/OrdStripeA?include={ALL_INCLUDES}").json()
    data = doc["data"]
    assert data["type"] == "orders" and data["links"]["self"].endswith("/api/orders/OrdStripeA")
    assert data["meta"] == {
        "mode": "test",
        "organization_id": "SandboxOrg",
        "trace_id": doc["meta"]["trace_id"],
    }
    for name, rel in data["relationships"].items():
        assert rel["links"]["related"].endswith(f"/api/orders/OrdStripeA/{name}")
    attrs = data["attributes"]
    assert attrs["total_amount_cents"] == 2 * 1500 + 2000 + 700
    assert attrs["formatted_total_amount"] == "€57,00"
    assert attrs["payment_source_details"]["type"] == "stripe_payment"
    customer = next(i for i in doc["included"] if i["type"] == "customers")
    assert customer["attributes"]["email"] == "alice@example.com" and customer["attributes"]["has_password"]
    source = next(i for i in doc["included"] if i["type"] == "stripe_payments")
    card = source["attributes"]["payment_method"]["card"]
    assert {k: card[k] for k in ("brand", "last4", "exp_month", "exp_year")} == {
        "brand": "visa",
        "last4": "4242",
        "exp_month": 12,
        "exp_year": 2030,
    }
    assert card["fingerprint"]
    market = next(i for i in doc["included"] if i["type"] == "markets")
    assert market["attributes"]["code"] == "eu"
    items = [i for i in doc["included"] if i["type"] == "line_items"]
    assert [i["attributes"]["sku_code"] for i in items] == [
        "EMUG12OZFFFFFF000000XXXX",
        "APRONXXXFFFFFF000000XXXX",
    ]


def test_bad_include_is_400(api):
    r = api.get("/orders/OrdStripeA?include=shipments")
    assert r.status_code == 400 and errors_of(r)[0]["code"] == "INVALID_INCLUDE"


# -- listing and pagination ------------------------------------------------------------------------


def test_orders_paginate_like_commerce_layer(api):
    first = api.get("/orders?page[size]=4&sort=number").json()
    total = first["meta"]["record_count"]
    assert total == 14 and first["meta"]["page_count"] == 4 and len(first["data"]) == 4
    seen, url = [], api.server.api_url + "/orders?page[size]=4&sort=number"
    while url:
        page = api.session.get(url, headers=api.headers()).json()
        seen += [o["id"] for o in page["data"]]
        url = page["links"].get("next")
    assert len(seen) == total == len(set(seen))
    numbers = [o["attributes"]["number"] for o in api.get("/orders?page[size]=25&sort=-number").json()["data"]]
    assert numbers == sorted(numbers, reverse=True)
    assert len(api.get("/orders").json()["data"]) == 10  # default page size


def test_page_size_over_25_is_400(api):
    r = api.get("/orders?page[size]=26")
    assert r.status_code == 400 and errors_of(r)[0]["code"] == "INVALID_PAGE_VALUE"


def test_updated_at_filters(api):
    time.sleep(0.01)
    api.patch_order("OrdKlarnaA", {"reference": "touched"})
    touched = api.get("/orders/OrdKlarnaA").json()["data"]["attributes"]["updated_at"]
    r = api.get(f"/orders?filter[q][updated_at_gteq]={touched}").json()
    assert [o["id"] for o in r["data"]] == ["OrdKlarnaA"]
    r = api.get(f"/orders?filter[q][updated_at_lteq]={touched}&filter[q][updated_at_gteq]={touched}").json()
    assert r["meta"]["record_count"] == 1
    r = api.get(f"/orders?filter[q][updated_at_lteq]={touched}&page[size]=25").json()
    assert r["meta"]["record_count"] == 14
    assert api.get("/orders?filter[q][created_at_gteq]=2999-01-01T00:00:00Z").json()["meta"]["record_count"] == 0
    bad = api.get("/orders?filter[q][total_amount_cents_gt]=1")
    assert bad.status_code == 400 and errors_of(bad)[0]["code"] == "FILTER_NOT_ALLOWED"


# -- the webhooks resource -------------------------------------------------------------------------


def test_webhook_crud_and_circuit_reset(api):
    body = {
        "data": {
            "type": "webhooks",
            "attributes": {
                "topic": "orders.place",
                "callback_url": "http://127.0.0.1:9/hook",
                "include_resources": ["customer", "payment_source"],
            },
        }
    }
    r = api.post("/webhooks", body)
    assert r.status_code == 201
    hook = r.json()["data"]
    assert len(hook["attributes"]["shared_secret"]) >= 16
    assert hook["attributes"]["circuit_state"] == "closed" and hook["attributes"]["circuit_failure_count"] == 0
    hid = hook["id"]
    listed = [h["id"] for h in api.get("/webhooks").json()["data"]]
    assert hid in listed
    r = api.patch(
        f"/webhooks/{hid}",
        {
            "data": {
                "type": "webhooks",
                "id": hid,
                "attributes": {"_reset_circuit": True, "name": "renamed"},
            }
        },
    )
    assert r.status_code == 200 and r.json()["data"]["attributes"]["name"] == "renamed"
    assert api.get(f"/webhooks/{hid}/last_event_callbacks").json()["data"] == []
    assert api.delete(f"/webhooks/{hid}").status_code == 204
    assert api.get(f"/webhooks/{hid}").status_code == 404


@pytest.mark.parametrize(
    ("attributes", "pointer"),
    [
        ({"topic": "orders.place"}, "/data/attributes"),  # callback_url is required
        ({"topic": "orders.explode", "callback_url": "http://x/"}, "/data/attributes/topic"),
        ({"topic": "orders.place", "callback_url": "ftp://x/"}, "/data/attributes/callback_url"),
        (
            {
                "topic": "orders.place",
                "callback_url": "http://x/",
                "include_resources": ["shipments"],
            },
            "/data/attributes/include_resources/0",
        ),
        (
            {"topic": "orders.place", "callback_url": "http://x/", "shared_secret": "mine"},
            "/data/attributes/shared_secret",
        ),
    ],
)
def test_bad_webhook_bodies_are_422(api, attributes, pointer):
    r = api.post("/webhooks", {"data": {"type": "webhooks", "attributes": attributes}})
    assert r.status_code == 422
    assert pointer in [e["source"]["pointer"] for e in errors_of(r)]


def test_method_not_allowed_is_in_errors_shape(api):
    r = api.session.put(api.server.api_url + "/orders/OrdStripeA", headers=api.headers(), data="{}")
    assert r.status_code == 405 and errors_of(r)[0]["status"] == "405"
