"""The sandbox serving several organizations in one process (commercelayer_sandbox/organizations.py):
each its own credentials, tokens, orders, wallets and webhooks, reached by path prefix or host
name; one rate budget per client address across them; a request log naming organization and token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from commercelayer_sandbox import SandboxServer
from commercelayer_sandbox.errors import SandboxError
from commercelayer_sandbox.organizations import split_scenario
from commercelayer_sandbox.tokens import unverified_claims
from support.sandbox import FAST

API = "application/vnd.api+json"
HEADERS = {"Accept": API, "Content-Type": API}


def org(slug: str, *, orders: int = 2) -> dict[str, Any]:
    return {
        "clients": [{"client_id": f"{slug}-id", "client_secret": f"{slug}-secret"}],
        "markets": [{"id": f"Mkt{slug.title()}", "code": "eu"}],
        "customers": [{"id": f"Cust{slug.title()}", "email": f"ann@{slug}.example"}],
        "orders": [
            {"id": f"Ord{slug.title()}{n}", "customer": f"ann@{slug}.example", "payment_source": "stripe_payments"}
            for n in range(orders)
        ],
        "webhooks": [
            {
                "id": f"Hook{slug.title()}",
                "topic": "orders.place",
                "callback_url": "http://127.0.0.1:9/",
                "shared_secret": f"{slug}-shared-secret",
            }
        ],
    }


SCENARIO = {
    "sandbox": {**FAST, "api_limits": ["6/60"], "endpoint_limits": [], "auth_limits": ["20/60"]},
    "organizations": {"acme": org("acme"), "globex": org("globex", orders=1)},
}


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer(scenario=SCENARIO) as s:
        yield s


def token(base: str, slug: str) -> str:
    r = requests.post(
        f"{base}/oauth/token",
        json={"grant_type": "client_credentials", "client_id": f"{slug}-id", "client_secret": f"{slug}-secret"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def get(url: str, tok: str, **headers: str) -> requests.Response:
    return requests.get(url, headers={**HEADERS, "Authorization": f"Bearer {tok}", **headers}, timeout=10)


def test_each_organization_has_its_own_clients_tokens_and_orders(server):
    acme, globex = server.org_url("acme"), server.org_url("globex")
    ta, tg = token(acme, "acme"), token(globex, "globex")
    assert unverified_claims(ta)["organization"]["slug"] == "acme"
    assert unverified_claims(tg)["organization"]["slug"] == "globex"
    assert unverified_claims(ta)["organization"]["id"] != unverified_claims(tg)["organization"]["id"]
    # one organization's client is unknown to another
    r = requests.post(
        f"{globex}/oauth/token",
        json={"grant_type": "client_credentials", "client_id": "acme-id", "client_secret": "acme-secret"},
        timeout=10,
    )
    assert r.status_code == 401
    listed = get(f"{acme}/api/orders", ta).json()
    assert sorted(o["id"] for o in listed["data"]) == ["OrdAcme0", "OrdAcme1"]
    # links keep the organization's prefix
    assert listed["links"]["first"].startswith(f"{acme}/api/orders?")
    assert get(f"{globex}/api/orders/OrdAcme0", tg).status_code == 404
    # a token is valid only at the organization that issued it
    assert get(f"{globex}/api/orders", ta).status_code == 401
    assert get(f"{acme}/api/orders/OrdAcme0", ta).status_code == 200
    # the webhooks and their secrets are each organization's own
    state = requests.get(f"{globex}/_sandbox/state", timeout=10).json()
    assert [o["id"] for o in state["orders"]] == ["OrdGlobex0"]
    summary = server.sandboxes["globex"].summary()
    assert [w["shared_secret"] for w in summary["webhooks"]] == ["globex-shared-secret"]
    assert requests.get(f"{server.url}/_org/nope/api/orders", timeout=10).status_code == 404


def test_host_name_reaches_its_organization(server):
    tg = token(server.org_url("globex"), "globex")
    r = get(f"{server.url}/api/orders", tg, Host=f"globex.localhost:{server.port}")
    assert r.status_code == 200, r.text
    assert [o["id"] for o in r.json()["data"]] == ["OrdGlobex0"]
    # without a prefix or a known host name: the first organization, where globex's token is unknown
    assert get(f"{server.url}/api/orders", tg).status_code == 401


def test_rate_limits_count_per_address_across_organizations(server):
    acme, globex = server.org_url("acme"), server.org_url("globex")
    ta, tg = token(acme, "acme"), token(globex, "globex")
    statuses = [get(f"{acme}/api/orders/OrdAcme0", ta).status_code for _ in range(4)]
    statuses += [get(f"{globex}/api/orders/OrdGlobex0", tg).status_code for _ in range(4)]
    assert statuses == [200] * 6 + [429] * 2  # 6/60 for the address, not per organization
    assert requests.get(f"{globex}/_sandbox/stats", timeout=10).json()["rate_limited"]["total"] == 2


def test_the_request_log_names_the_organization_and_the_token(server):
    acme, globex = server.org_url("acme"), server.org_url("globex")
    ta, tg = token(acme, "acme"), token(globex, "globex")
    get(f"{acme}/api/orders/OrdAcme0", ta)
    get(f"{globex}/api/orders/OrdGlobex0", tg)
    logged = requests.get(f"{globex}/_sandbox/requests", timeout=10).json()["requests"]
    assert [(e["route"], e["organization"]) for e in logged] == [("token", "globex"), ("orders.get", "globex")]
    assert logged[0]["token"] is None
    seen = logged[1]["token"]
    assert seen["organization"] == "globex" and seen["client_id"] == "globex-id"
    assert len(seen["sha256"]) == 16 and tg not in str(logged)
    other = requests.get(f"{acme}/_sandbox/requests", timeout=10).json()["requests"]
    assert other[-1]["token"]["client_id"] == "acme-id" and other[-1]["token"]["sha256"] != seen["sha256"]


def test_each_organization_saves_in_its_own_wallet(server):
    acme, globex = server.org_url("acme"), server.org_url("globex")
    tg = token(globex, "globex")
    body = {
        "data": {"type": "orders", "id": "OrdGlobex0", "attributes": {"_save_payment_source_to_customer_wallet": True}}
    }
    r = requests.patch(
        f"{globex}/api/orders/OrdGlobex0", json=body, headers={**HEADERS, "Authorization": f"Bearer {tg}"}, timeout=10
    )
    assert r.status_code == 200, r.text
    r = requests.post(f"{globex}/_sandbox/events", json={"topic": "orders.place", "order_id": "OrdGlobex0"}, timeout=10)
    assert r.status_code == 202
    assert len(requests.get(f"{globex}/_sandbox/state", timeout=10).json()["customer_payment_sources"]) == 1
    assert requests.get(f"{acme}/_sandbox/state", timeout=10).json()["customer_payment_sources"] == []
    assert requests.get(f"{acme}/_sandbox/events", timeout=10).json()["events"] == []


def test_the_listing_and_the_root(server):
    doc = requests.get(f"{server.url}/_sandbox/organizations", timeout=10).json()
    assert [(o["slug"], o["clients"]) for o in doc["organizations"]] == [
        ("acme", ["acme-id"]),
        ("globex", ["globex-id"]),
    ]
    assert doc["organizations"][1]["api_url"] == f"{server.url}/_org/globex/api"
    # a multi-organization scenario is loaded at start only
    r = requests.post(f"{server.url}/_sandbox/scenario", json=SCENARIO, timeout=10)
    assert r.status_code == 400 and "organizations" in r.text


@pytest.mark.parametrize(
    ("scenario", "path"),
    [
        ({"organizations": {"Bad_Slug": {}}}, "organizations.Bad_Slug"),
        ({"organizations": [{"slug": "a"}, {"slug": "a"}]}, "organizations.a"),
        ({"organizations": {"a": {}}, "orders": []}, "orders"),
        ({"organizations": [{"clients": []}]}, "organizations[0].slug"),
        ({"organizations": {}}, "organizations"),
    ],
)
def test_a_bad_organizations_list_is_one_clear_error(scenario, path):
    with pytest.raises(SandboxError) as err:
        split_scenario(scenario)
    assert err.value.path == path


def test_a_list_of_organizations_and_the_shared_settings():
    parts = split_scenario(
        {"sandbox": {"token_ttl": 60}, "organizations": [{"slug": "a", "sandbox": {"token_ttl": 5}}]}
    )
    assert parts == [("a", {"sandbox": {"token_ttl": 5, "organization_id": "OrgA", "organization_slug": "a"}})]
    assert split_scenario({"orders": []}) is None
