"""The sandbox answers as Commerce Layer documents (issue 10), over real HTTP.

Each test pins one documented point that a kinder double would get wrong: linkage only for
included paths, dotted include paths, related-resource routes, JWT access tokens, meta and
trace ids, nulls, sparse fieldsets, links behind a TLS proxy, one payment source record per
order, and the "apply, then answer late" fault.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
import requests
from commercelayer_sandbox.tokens import unverified_claims
from support.sandbox import API, Api, Receiver, example, running, webhook_scenario


@pytest.fixture(scope="module")
def server() -> Iterator:
    with running() as srv:
        yield srv


@pytest.fixture
def api(server) -> Iterator[Api]:
    client = Api(server)
    assert client.control("POST", "/reset", {}).status_code == 200
    client.get_token()
    yield client
    client.close()


def save(api: Api, order_id: str) -> None:
    r = api.patch_order(order_id, {"_save_payment_source_to_customer_wallet": True})
    assert r.status_code == 200, r.text


def included(doc: dict, rtype: str) -> list[dict]:
    return [i for i in doc.get("included", []) if i["type"] == rtype]


# -- linkage only where included (core/including-associations) ----------------------------------


def test_wallet_entries_carry_no_linkage_unless_their_path_is_included(api):
    save(api, "OrdStripeA")
    doc = api.get("/orders/OrdStripeA?include=available_customer_payment_sources").json()
    rels = doc["data"]["relationships"]
    assert len(rels["available_customer_payment_sources"]["data"]) == 1
    assert "data" not in rels["customer"] and "data" not in rels["payment_source"]
    (entry,) = included(doc, "customer_payment_sources")
    assert all("data" not in rel for rel in entry["relationships"].values())
    assert set(entry["relationships"]["payment_source"]["links"]) == {"self", "related"}
    assert [i["type"] for i in doc["included"]] == ["customer_payment_sources"]


@pytest.mark.parametrize("how", ["get", "list", "patch"])
def test_dotted_include_paths_on_get_list_and_patch(api, how):
    save(api, "OrdStripeA")
    include = "available_customer_payment_sources.payment_source,line_items.item"
    if how == "get":
        doc = api.get(f"/orders/OrdStripeA?include={include}").json()
        data = doc["data"]
    elif how == "list":
        doc = api.get(f"/orders?include={include}&filter[q][id_in]=OrdStripeA").json()
        (data,) = doc["data"]
    else:
        r = api.patch_order("OrdStripeA", {"reference": "dotted"}, include=include)
        assert r.status_code == 200, r.text
        doc = r.json()
        data = doc["data"]
    (entry,) = included(doc, "customer_payment_sources")
    linkage = entry["relationships"]["payment_source"]["data"]
    assert linkage == {"type": "stripe_payments", "id": "PsStripeAa"}
    assert "data" not in entry["relationships"]["customer"]
    (source,) = included(doc, "stripe_payments")
    assert source["id"] == "PsStripeAa"
    assert "data" not in source["relationships"]["order"]
    # the intermediate resources carry the next segment's linkage; the order only the first
    assert "data" not in data["relationships"]["payment_source"]
    items = included(doc, "line_items")
    assert len(items) == 2 and all(i["relationships"]["item"]["data"]["type"] == "skus" for i in items)
    assert {s["attributes"]["code"] for s in included(doc, "skus")} == {
        "EMUG12OZFFFFFF000000XXXX",
        "APRONXXXFFFFFF000000XXXX",
    }


@pytest.mark.parametrize("include", ["available_customer_payment_sources.nope", "customer.nope", "nope", "line_items."])
def test_invalid_include_paths_are_400(api, include):
    r = api.get(f"/orders/OrdStripeA?include={include}")
    assert r.status_code == 400
    (err,) = r.json()["errors"]
    assert err["code"] == "INVALID_INCLUDE" and err["status"] == "400"
    r = api.patch_order("OrdStripeA", {"reference": "never"}, include=include)
    assert r.status_code == 400
    assert api.get("/orders/OrdStripeA").json()["data"]["attributes"]["reference"] is None


# -- related-resource routes (openapi.json paths) --------------------------------------------------


def test_order_related_routes(api):
    save(api, "OrdExtAaaa")  # Bob now has two entries: the seeded one and this one
    wallet = api.get("/orders/OrdExtAaaa/available_customer_payment_sources?page[size]=1")
    assert wallet.status_code == 200
    page = wallet.json()
    assert page["meta"]["record_count"] == 2 and page["meta"]["page_count"] == 2
    assert len(page["data"]) == 1 and page["data"][0]["type"] == "customer_payment_sources"
    assert {"first", "next", "last"} <= set(page["links"])
    second = api.session.get(page["links"]["next"], headers=api.headers()).json()
    assert second["data"][0]["id"] != page["data"][0]["id"]
    assert api.get("/orders/OrdExtAaaa/customer").json()["data"]["id"] == "CustBobAaa"
    assert api.get("/orders/OrdStripeA/market").json()["data"]["attributes"]["code"] == "eu"
    items = api.get("/orders/OrdStripeA/line_items").json()
    assert items["meta"]["record_count"] == 2 and items["data"][0]["type"] == "line_items"
    method = api.get("/orders/OrdStripeA/payment_method").json()["data"]
    assert method["type"] == "payment_methods"
    assert method["attributes"]["payment_source_type"] == "stripe_payments"
    assert api.get("/orders/OrdGuestWi/customer").json()["data"] is None


def test_customer_and_wallet_routes(api):
    assert api.get("/customers/CustBobAaa").json()["data"]["attributes"]["email"] == "bob@example.com"
    wallet = api.get("/customers/CustBobAaa/customer_payment_sources").json()
    assert [w["id"] for w in wallet["data"]] == ["WalletBobA"]
    entry = api.get("/customer_payment_sources/WalletBobA?include=customer").json()
    assert entry["data"]["relationships"]["customer"]["data"]["id"] == "CustBobAaa"
    assert api.get("/customer_payment_sources/WalletBobA/customer").json()["data"]["id"] == "CustBobAaa"
    assert api.get("/customers/NoSuchCus").status_code == 404


def test_every_related_link_the_sandbox_renders_resolves(api):
    api.control("PUT", "/config", {"api_limits": [], "endpoint_limits": []})  # many calls
    save(api, "OrdStripeA")
    doc = api.get(
        "/orders/OrdStripeA?include=customer,market,line_items,payment_method,payment_source,"
        "available_customer_payment_sources"
    ).json()
    for resource in [doc["data"], *doc["included"]]:
        for name, rel in resource["relationships"].items():
            for link in rel["links"].values():
                r = api.session.get(link, headers=api.headers())
                assert r.status_code == 200, (resource["type"], name, link, r.text)
                assert "data" in r.json()


def test_deleting_a_wallet_entry(api):
    r = api.delete("/customer_payment_sources/WalletBobA")
    assert r.status_code == 204 and r.content == b""
    assert api.get("/customer_payment_sources/WalletBobA").status_code == 404
    assert api.get("/customers/CustBobAaa/customer_payment_sources").json()["data"] == []
    assert api.delete("/customer_payment_sources/WalletBobA").status_code == 404


# -- access tokens are JWTs (core/authentication; js-auth's jwtDecode) ---------------------------


def test_access_token_is_a_jwt_with_commerce_layers_claims(api):
    before = int(time.time())
    claims = unverified_claims(api.token)
    header = json.loads(base64.urlsafe_b64decode(api.token.split(".")[0] + "=="))
    assert header["alg"] == "HS512" and header["typ"] == "JWT"
    assert claims["organization"]["slug"] == "sandbox"
    assert claims["organization"]["id"] == "SandboxOrg"
    app = claims["application"]
    assert app["kind"] == "integration" and app["client_id"] == "sandbox-client-id"
    assert app["public"] is False and app["id"]
    assert claims["scope"] == "market:code:eu" and claims["test"] is True
    assert claims["market"]["id"] == ["MarketEuAa"]
    assert claims["iss"] == "https://auth.localhost"
    assert abs(claims["iat"] - before) <= 2 and claims["exp"] - claims["iat"] in (7199, 7200)
    assert 0 <= claims["rand"] < 1


def test_organization_slug_domain_and_kind_come_from_the_scenario():
    scenario = example()
    scenario["sandbox"].update(
        {"organization_slug": "cake-store", "organization_id": "EnpVOFrKvy", "domain": "cl.test"}
    )
    scenario["clients"].append(
        {
            "client_id": "sales-channel-id",
            "client_secret": "sc-secret",
            "scope": "market:code:us",
            "kind": "sales_channel",
        }
    )
    with running(scenario) as srv:
        api = Api(srv)
        claims = unverified_claims(api.get_token("sales-channel-id", "sc-secret"))
        assert claims["organization"] == {
            "id": "EnpVOFrKvy",
            "slug": "cake-store",
            "enterprise": False,
            "region": "eu-west-1",
        }
        assert claims["iss"] == "https://auth.cl.test"
        assert claims["application"]["kind"] == "sales_channel"
        assert claims["application"]["public"] is True
        assert claims["market"]["id"] == ["MarketUsAa"]
        doc = api.get("/orders/OrdStripeA").json()
        assert doc["meta"]["organization_id"] == "EnpVOFrKvy"
        api.close()


def test_tampered_and_expired_tokens_are_refused(api):
    head, payload, sig = api.token.split(".")
    claims = unverified_claims(api.token)
    claims["exp"] += 3600
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    r = api.get("/orders/OrdStripeA", headers=api.headers(Authorization=f"Bearer {head}.{forged}.{sig}"))
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "INVALID_TOKEN"
    api.control("PUT", "/config", {"token_ttl": 0.5})
    api.get_token()
    exp = unverified_claims(api.token)["exp"]
    assert api.get("/orders/OrdStripeA").status_code == 200
    time.sleep(0.6)
    assert time.time() < exp + 1
    r = api.get("/orders/OrdStripeA")
    assert r.status_code == 401
    (err,) = r.json()["errors"]
    assert err["code"] == "INVALID_TOKEN" and "expired" in err["detail"]


def test_token_endpoint_keeps_its_documented_shape(api):
    r = api.session.post(
        api.server.auth_url,
        json={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client-id",
            "client_secret": "sandbox-client-secret",
        },
    )
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "created_at"}
    assert body["token_type"] == "bearer"
    assert unverified_claims(body["access_token"])["iat"] == body["created_at"]


# -- meta, nulls, sparse fieldsets -------------------------------------------------------------------


def test_every_answer_has_meta_with_mode_organization_and_trace_id(api):
    one = api.get("/orders/OrdStripeA?include=customer").json()
    assert set(one["meta"]) == {"mode", "organization_id", "trace_id"}
    assert one["meta"]["mode"] == "test" and len(one["meta"]["trace_id"]) == 64
    assert one["data"]["meta"] == one["meta"] == included(one, "customers")[0]["meta"]
    again = api.get("/orders/OrdStripeA").json()
    assert again["meta"]["trace_id"] != one["meta"]["trace_id"]
    listing = api.get("/orders").json()
    assert {"record_count", "page_count", "mode", "organization_id", "trace_id"} == set(listing["meta"])
    api.control("PUT", "/config", {"mode": "live"})
    assert api.get("/orders/OrdStripeA").json()["meta"]["mode"] == "live"


def test_null_attributes_are_sent_as_null(api):
    attrs = api.get("/orders/OrdDraftAa").json()["data"]["attributes"]
    for key in ("placed_at", "coupon_code", "tax_rate", "reference", "cart_url", "duty_amount_cents"):
        assert key in attrs and attrs[key] is None, key


def test_sparse_fieldsets(api):
    doc = api.get("/orders/OrdStripeA?fields[orders]=number,status").json()
    assert set(doc["data"]["attributes"]) == {"number", "status"}
    assert "relationships" not in doc["data"]
    doc = api.get("/orders/OrdStripeA?include=customer&fields[orders]=number,customer&fields[customers]=email").json()
    assert set(doc["data"]["attributes"]) == {"number"}
    assert set(doc["data"]["relationships"]) == {"customer"}
    assert doc["data"]["relationships"]["customer"]["data"]["id"] == "CustAliceA"
    assert included(doc, "customers")[0]["attributes"] == {"email": "alice@example.com"}
    listing = api.get("/orders?fields[orders]=status").json()
    assert all(set(o["attributes"]) == {"status"} for o in listing["data"])
    bad = api.get("/orders/OrdStripeA?fields[orders]=nope")
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "INVALID_FIELD"
    bad = api.get("/orders/OrdStripeA?fields[nopes]=x")
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "INVALID_RESOURCE"


def test_links_follow_the_tls_proxy_headers(api):
    proxied = api.headers(**{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "sandbox.cl.test"})
    doc = api.get("/orders/OrdStripeA", headers=proxied).json()
    assert doc["data"]["links"]["self"] == "https://sandbox.cl.test/api/orders/OrdStripeA"
    related = doc["data"]["relationships"]["customer"]["links"]["related"]
    assert related == "https://sandbox.cl.test/api/orders/OrdStripeA/customer"
    listing = api.get("/orders?page[size]=2", headers=proxied).json()
    assert all(v.startswith("https://sandbox.cl.test/api/orders?") for v in listing["links"].values())
    plain = api.get("/orders/OrdStripeA").json()
    assert plain["data"]["links"]["self"] == f"{api.server.api_url}/orders/OrdStripeA"


def test_webhook_bodies_keep_relative_links_and_linkage_only_for_include_resources():
    receiver = Receiver()
    try:
        scenario = webhook_scenario(
            receiver.url, include=["customer", "available_customer_payment_sources.payment_source"]
        )
        with running(scenario) as srv:
            api = Api(srv)
            api.control("POST", "/events", {"topic": "orders.place", "order_ids": ["OrdBrainAa"]})
            (call,) = receiver.wait_for(1)
            api.close()
    finally:
        receiver.close()
    doc = json.loads(call.body)
    assert set(doc) == {"data", "included"}  # no document meta in webhook bodies
    data = doc["data"]
    assert data["meta"] == {"mode": "test", "organization_id": "SandboxOrg"}
    assert data["links"]["self"] == "/api/orders/OrdBrainAa"
    with_data = {k for k, v in data["relationships"].items() if "data" in v}
    assert with_data == {"customer", "available_customer_payment_sources"}
    (entry,) = included(doc, "customer_payment_sources")
    assert entry["relationships"]["payment_source"]["data"]["id"]
    assert "data" not in entry["relationships"]["customer"]
    for resource in [data, *doc["included"]]:
        assert resource["links"]["self"].startswith("/api/")
        for rel in resource["relationships"].values():
            assert rel["links"]["related"].startswith("/api/")


# -- one payment source record per order ----------------------------------------------------------


def test_a_wallet_entry_used_on_two_orders_makes_two_payment_source_records(api):
    save(api, "OrdStripeA")
    (entry,) = api.get("/customers/CustAliceA/customer_payment_sources").json()["data"]
    sources = {}
    for oid in ("OrdDraftAa", "OrdCkoAaaa"):
        r = api.patch_order(oid, {"_customer_payment_source_id": entry["id"]}, include="payment_source")
        assert r.status_code == 200, r.text
        (source,) = included(r.json(), "stripe_payments")
        sources[oid] = source
        order_total = r.json()["data"]["attributes"]["total_amount_cents"]
        assert source["attributes"]["intent_amount_cents"] == order_total
        method = source["attributes"]["payment_method"]
        assert method["id"] == entry["attributes"]["payment_source_token"]
        assert method["customer"] == entry["attributes"]["customer_token"]
        assert method["card"]["last4"] == "4242"
        order = api.get(f"/{source['type']}/{source['id']}/order").json()["data"]
        assert order["id"] == oid
    ids = {s["id"] for s in sources.values()} | {"PsStripeAa"}
    assert len(ids) == 3
    fingerprints = {s["attributes"]["payment_method"]["card"]["fingerprint"] for s in sources.values()}
    assert len(fingerprints) == 1
    original = api.get("/orders/OrdStripeA?include=payment_source").json()
    assert included(original, "stripe_payments")[0]["attributes"]["intent_amount_cents"] == 5700


# -- faults: apply, then answer after the client's read timeout --------------------------------------


@pytest.fixture
def late(api):
    rule = {"route": "orders.patch", "late_answer_share": 1.0, "late_answer_seconds": 1.0, "requests": 1}
    assert api.control("PUT", "/faults", {"rules": [rule]}).status_code == 200
    return api


def test_late_answer_fault(late):
    api = late
    body = {
        "data": {"type": "orders", "id": "OrdStripeA", "attributes": {"_save_payment_source_to_customer_wallet": True}}
    }
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.session.patch(
            api.server.api_url + "/orders/OrdStripeA", data=json.dumps(body), headers=api.headers(), timeout=0.3
        )
    assert time.monotonic() - started < 0.9
    # applied at once, although the client saw no answer
    wallet = api.get("/customers/CustAliceA/customer_payment_sources").json()["data"]
    assert len(wallet) == 1
    time.sleep(1.0)
    log = api.control("GET", "/requests?route=orders.patch").json()["requests"]
    assert log[-1]["faults"] == ["late_answer"] and log[-1]["status"] == 200
    # the rule was spent: the next PATCH answers at once
    assert api.patch_order("OrdStripeA", {"reference": "next"}).status_code == 200
    bad = api.control("PUT", "/faults", {"rules": [{"route": "x", "late_answer_share": 0.5}]})
    assert bad.status_code == 400


def test_api_media_type_still_required_on_related_routes(api):
    r = api.get("/orders/OrdStripeA/customer", headers=api.headers(Accept="application/json"))
    assert r.status_code == 406
    r = api.get("/orders/OrdStripeA/customer", headers={"Accept": API})
    assert r.status_code == 401
