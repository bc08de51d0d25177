"""Contract: the sandbox's answers and webhook bodies have the shape of a real Commerce Layer body.

The reference is tests/data/orders.place.guest-wire-transfer.json, an `orders` webhook body from
Commerce Layer's examples repository. For every resource type it holds, the sandbox renders the
same resource keys, the same attribute keys (nulls present, not left out) and the same
relationship names; linkage appears only for included paths; webhook links are relative.

The unit tests' fake Commerce Layer (tests/support/fakecl.py, source `fakecl`) is held to the same
contract for what it answers (`GET /api/orders/{id}`): a double friendlier than the real thing
would only test itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from support.fakecl import JSONAPI, FakeCommerceLayer
from support.sandbox import Api, Receiver, running, webhook_scenario

SAMPLE = json.loads((Path(__file__).parent / "data" / "orders.place.guest-wire-transfer.json").read_text())
#: What the real body's webhook included (every relationship of the order with linkage).
SAMPLE_INCLUDES = sorted(k for k, v in SAMPLE["data"]["relationships"].items() if "data" in v)
#: Attributes Commerce Layer added after the sample was taken (in the SDK's resources.json).
NEWER_ATTRIBUTES = {"markets": {"code"}, "customers": {"anonymization_info", "anonymization_status"}}
#: Relationships the sandbox renders beyond the sample (in the SDK's resources.json).
NEWER_RELATIONSHIPS = {"orders": {"returns"}, "customers": {"tags"}}
#: The sandbox's includes for the sample's: it models no addresses, shipments, shipping methods.
MODELLED = ["customer", "line_items", "market", "payment_method", "payment_source"]
#: What the fake Commerce Layer models of an order: its payment source and its customer's wallet.
FAKECL_MODELLED = ["available_customer_payment_sources", "payment_source"]
#: The resource types each source must render in common with the sample.
COMMON = {
    "webhook": {"orders", "customers", "markets", "line_items", "payment_methods", "wire_transfers"},
    "api": {"orders", "customers", "markets", "line_items", "payment_methods", "wire_transfers"},
    "fakecl": {"orders"},
}
SOURCES = ["webhook", "api", "fakecl"]


def sample_resources() -> dict[str, dict]:
    out = {"orders": SAMPLE["data"]}
    for item in SAMPLE["included"]:
        out.setdefault(item["type"], item)
    return out


@pytest.fixture(scope="module")
def webhook_doc() -> dict:
    receiver = Receiver()
    try:
        with running(webhook_scenario(receiver.url, include=MODELLED)) as srv:
            api = Api(srv)
            api.control("POST", "/events", {"topic": "orders.place", "order_ids": ["OrdWireAaa"]})
            (call,) = receiver.wait_for(1)
            api.close()
    finally:
        receiver.close()
    return json.loads(call.body)


@pytest.fixture(scope="module")
def answer() -> dict:
    with running() as srv:
        api = Api(srv)
        api.get_token()
        doc = api.get(f"/orders/OrdWireAaa?include={','.join(MODELLED)}").json()
        api.close()
    return doc


@pytest.fixture(scope="module")
def fakecl_answer() -> dict:
    with FakeCommerceLayer() as cl:
        order = cl.add_order("OrdWireAaa")
        order.wallet.append({"id": "cpsOrdWireAaa", "source_id": "psSaved", "source_type": "stripe_payments"})
        order.wallet[0]["created_at"] = "2026-11-26T00:00:00.000Z"
        creds = {"grant_type": "client_credentials", "client_id": cl.client_id, "client_secret": cl.client_secret}
        token = requests.post(cl.url + "/oauth/token", json=creds, timeout=5).json()["access_token"]
        answer = requests.get(
            f"{cl.url}/api/orders/OrdWireAaa?include={','.join(FAKECL_MODELLED)}",
            headers={"Authorization": f"Bearer {token}", "Accept": JSONAPI},
            timeout=5,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
def docs(webhook_doc, answer, fakecl_answer) -> dict[str, dict]:
    return {"webhook": webhook_doc, "api": answer, "fakecl": fakecl_answer}


def by_type(doc: dict) -> dict[str, dict]:
    out = {doc["data"]["type"]: doc["data"]}
    for item in doc.get("included", []):
        out.setdefault(item["type"], item)
    return out


def test_the_sample_is_what_the_contract_says():
    assert set(SAMPLE) == {"data", "included"}
    assert SAMPLE_INCLUDES == [
        "billing_address",
        "customer",
        "line_items",
        "market",
        "payment_method",
        "payment_source",
        "shipments",
        "shipping_address",
    ]


@pytest.mark.parametrize("source", SOURCES)
def test_resources_have_the_samples_keys(source, docs):
    ours = by_type(docs[source])
    theirs = sample_resources()
    common = set(ours) & set(theirs)
    assert common >= COMMON[source]
    for rtype in sorted(common):
        mine, real = ours[rtype], theirs[rtype]
        assert set(mine) == set(real), rtype
        assert set(mine["meta"]) >= set(real["meta"]), rtype
        extra_attrs = set(mine["attributes"]) - set(real["attributes"])
        missing_attrs = set(real["attributes"]) - set(mine["attributes"])
        assert not missing_attrs, (rtype, missing_attrs)
        if rtype != "wire_transfers":  # the sample predates payment_instrument
            assert extra_attrs <= NEWER_ATTRIBUTES.get(rtype, set()), (rtype, extra_attrs)
        real_rels, my_rels = set(real["relationships"]), set(mine["relationships"])
        assert real_rels <= my_rels, (rtype, real_rels - my_rels)
        assert my_rels - real_rels <= NEWER_RELATIONSHIPS.get(rtype, set()), rtype
        for name, rel in mine["relationships"].items():
            assert set(rel["links"]) == {"self", "related"}, (rtype, name)


@pytest.mark.parametrize("source", SOURCES)
def test_nulls_are_present_where_the_sample_has_them(source, docs):
    ours, theirs = by_type(docs[source]), sample_resources()
    for rtype in set(ours) & set(theirs):
        for key, value in theirs[rtype]["attributes"].items():
            if value is None:
                assert key in ours[rtype]["attributes"], (rtype, key)


@pytest.mark.parametrize("source", SOURCES)
def test_linkage_only_for_included_paths(source, docs):
    doc = docs[source]
    data = doc["data"]
    included = FAKECL_MODELLED if source == "fakecl" else MODELLED
    assert sorted(k for k, v in data["relationships"].items() if "data" in v) == included
    for item in doc["included"]:
        assert all("data" not in rel for rel in item["relationships"].values()), item["type"]


def test_webhook_body_links_are_relative_like_the_sample(webhook_doc):
    assert set(webhook_doc) == set(SAMPLE)
    assert webhook_doc["data"]["links"]["self"] == "/api/orders/OrdWireAaa"
    assert set(webhook_doc["data"]["meta"]) == set(SAMPLE["data"]["meta"]) == {"mode", "organization_id"}
    for resource in [webhook_doc["data"], *webhook_doc["included"]]:
        assert resource["links"]["self"] == f"/api/{resource['type']}/{resource['id']}"
        for name, rel in resource["relationships"].items():
            base = f"/api/{resource['type']}/{resource['id']}"
            assert rel["links"] == {"self": f"{base}/relationships/{name}", "related": f"{base}/{name}"}


@pytest.mark.parametrize("source", ["api", "fakecl"])
def test_api_answers_add_a_trace_id_and_absolute_links(source, docs):
    answer = docs[source]
    assert set(answer) == {"data", "included", "meta"}
    assert set(answer["meta"]) == {"mode", "organization_id", "trace_id"}
    assert answer["data"]["links"]["self"].startswith("http://127.0.0.1:")
