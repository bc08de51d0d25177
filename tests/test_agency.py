"""Agency mode through the intake and the worker: one deployment, three organizations, each a
fake Commerce Layer of its own (its own credentials and orders). Deliveries are checked against
their organization's secrets only and stored under it; the worker acts with that organization's
credentials, policy and mode, and the organizations take turns."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import make_settings, signed_headers
from support.builders import order_body
from support.fakecl import FakeCommerceLayer

from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.ops.replay import Replayer, from_store
from webhook_app.organizations import load_organizations
from webhook_app.policy import load_policy
from webhook_app.ratelimit import LocalRateLimiter
from webhook_app.store import DeliveryFilter
from webhook_app.tokens import ADMIN, Tokens
from webhook_app.web import create_app
from webhook_app.worker import Tenant, Worker

SLUGS = ("acme", "globex", "initech")
SECRETS = {slug: f"{slug}-webhook-secret-0123456789" for slug in SLUGS}


@pytest.fixture
def agency(tmp_path: Path, sqlite_store, clock, monkeypatch) -> Iterator[Any]:
    fakes = {
        slug: FakeCommerceLayer(client_id=f"{slug}-id", client_secret=f"{slug}-client-secret-0123") for slug in SLUGS
    }
    for f in fakes.values():
        f.__enter__()
    tables = []
    for slug, fake in fakes.items():
        monkeypatch.setenv(f"{slug.upper()}_WEBHOOK_SECRETS", f"main:{SECRETS[slug]}")
        monkeypatch.setenv(f"{slug.upper()}_CL_CLIENT_SECRET", fake.client_secret)
        tables.append(
            f'[organizations.{slug}]\nwebhook_secrets_env = "{slug.upper()}_WEBHOOK_SECRETS"\n'
            f'client_id = "{fake.client_id}"\nclient_secret_env = "{slug.upper()}_CL_CLIENT_SECRET"\n'
            f'api_base = "{fake.url}"\nauth_url = "{fake.url}/oauth/token"\n'
            + ('mode = "shadow"\n' if slug == "globex" else "")
        )
    path = tmp_path / "organizations.toml"
    path.write_text("\n".join(tables))
    settings = make_settings(tmp_path, organizations_path=path, webhook_secrets=(), cl_read_timeout=0.5)
    orgs = load_organizations(settings)

    class Agency:
        def __init__(self) -> None:
            self.fakes, self.store, self.settings, self.orgs = fakes, sqlite_store, settings, orgs
            self.http = create_app(settings, store=sqlite_store, clock=clock).test_client()
            self.limiter = LocalRateLimiter(settings.cl_rate_limits)
            self.clients: list[CommerceLayerClient] = []

        def post(self, slug: str, order_id: str, *, signed_for: str | None = None, path: str | None = None) -> Any:
            body = order_body(order_id)
            return self.http.post(
                path or f"/webhooks/commercelayer/{slug}",
                data=body,
                headers=signed_headers(body, secret=SECRETS[signed_for or slug]),
            )

        def worker(self) -> Worker:
            tenants = {}
            for org in self.orgs:
                view = org.settings(self.settings)
                client = None
                if not view.shadow:
                    client = CommerceLayerClient.from_settings(view, limiter=self.limiter)
                    self.clients.append(client)
                tenants[org.slug] = Tenant(view, load_policy(org.policy_path), client)
            return Worker(
                store=self.store,
                policy=load_policy(self.settings.policy_path),
                settings=self.settings,
                clock=clock,
                worker_id="w1",
                rng=random.Random(1),
                tenants=tenants,
            )

    a = Agency()
    yield a
    for c in a.clients:
        c.close()
    for f in fakes.values():
        f.__exit__(None, None, None)


def test_each_delivery_is_checked_with_its_organizations_secrets_and_stored_under_it(agency) -> None:
    ok = agency.post("acme", "ordA1")
    assert ok.status_code == 202, ok.get_json()
    stored = agency.store.get_delivery(ok.get_json()["delivery_id"])
    assert stored.organization == "acme"
    # signed with globex's secret, posted to acme's path: refused, nothing stored
    cross = agency.post("acme", "ordX1", signed_for="globex")
    assert cross.status_code == 401
    assert agency.post("nobody", "ordN1", signed_for="acme").status_code == 404
    plain = agency.post("acme", "ordP1", path="/webhooks/commercelayer")
    assert plain.status_code == 404 and "organization slug" in plain.get_json()["errors"][0]["detail"]
    assert [d.resource_id for d in agency.store.list_deliveries(DeliveryFilter())] == ["ordA1"]
    # the same body at two organizations is two deliveries, not a duplicate
    again = agency.post("initech", "ordA1")
    assert again.status_code == 202 and again.get_json()["delivery_id"] != ok.get_json()["delivery_id"]
    assert agency.http.get("/webhooks/commercelayer/acme").status_code == 405


def test_the_worker_acts_with_each_organizations_credentials_and_mode(agency) -> None:
    for slug in SLUGS:
        agency.fakes[slug].add_order(f"ord-{slug}", source_id=f"ps{slug}")
        assert agency.post(slug, f"ord-{slug}").status_code == 202
    outcomes = agency.worker().drain()
    assert sorted(o.outcome for o in outcomes) == ["applied", "applied", "shadow"]
    for slug in ("acme", "initech"):
        patches = agency.fakes[slug].patches()
        assert [p["path"].rsplit("/", 1)[-1] for p in patches] == [f"ord-{slug}"]
        assert agency.fakes[slug].orders[f"ord-{slug}"].wallet  # saved in its own organization's wallet
    assert agency.fakes["globex"].requests == []  # shadow: nothing sent
    tokens = {
        slug: {r["headers"].get("Authorization") for r in agency.fakes[slug].calls("orders.patch")}
        for slug in ("acme", "initech")
    }
    assert tokens["acme"].isdisjoint(tokens["initech"])


def test_a_backlog_in_one_organization_does_not_hold_up_another(agency) -> None:
    for n in range(300):
        agency.fakes["acme"].add_order(f"big{n}")
        agency.post("acme", f"big{n}")
    agency.fakes["initech"].add_order("small1")
    agency.post("initech", "small1")
    worker = agency.worker()
    handled = []
    for _ in range(3):
        outcome = worker.run_once()
        assert outcome is not None
        handled.append([p["path"].rsplit("/", 1)[-1] for f in agency.fakes.values() for p in f.patches()])
    assert "small1" in handled[-1]  # within the first two jobs, not after 300
    assert len(agency.fakes["initech"].patches()) == 1


def test_the_admin_filters_by_organization_and_keeps_a_removed_ones_data_readable(agency, tmp_path, clock) -> None:
    for slug in SLUGS:
        assert agency.post(slug, f"ord-{slug}").status_code == 202
    keys = ("admin-key-0123456789abcdef",)
    app = create_app(agency.settings.with_overrides(admin_keys=keys), store=agency.store, clock=clock).test_client()
    auth = {"Authorization": f"Bearer {Tokens(ADMIN, keys, clock).make(ttl=3600)}"}
    r = app.get("/admin/deliveries?organization=globex", headers=auth)
    assert r.status_code == 200, r.get_json()
    rows = r.get_json()["deliveries"]
    assert [(d["resource_id"], d["organization"]) for d in rows] == [("ord-globex", "globex")]
    assert app.get("/admin/deliveries?organization=Bad_Slug", headers=auth).status_code == 400
    # globex leaves the file; after a restart its stored deliveries are still there to read
    text = agency.settings.organizations_path.read_text()
    remaining = text[: text.index("[organizations.globex]")] + text[text.index("[organizations.initech]") :]
    path = tmp_path / "fewer.toml"
    path.write_text(remaining)
    fewer = agency.settings.with_overrides(organizations_path=path, admin_keys=keys)
    assert load_organizations(fewer).slugs() == ("acme", "initech")
    after = create_app(fewer, store=agency.store, clock=clock).test_client()
    rows = after.get("/admin/deliveries?organization=globex", headers=auth).get_json()["deliveries"]
    assert [d["resource_id"] for d in rows] == ["ord-globex"]
    assert after.get(f"/admin/deliveries/{rows[0]['id']}", headers=auth).status_code == 200
    assert (
        after.post(
            "/webhooks/commercelayer/globex", data=b"{}", headers={"Content-Type": "application/json"}
        ).status_code
        == 404
    )


def test_readyz_reports_each_enforce_organizations_credentials(agency, clock) -> None:
    """One check per enforce-mode organization (`commercelayer_credentials:<slug>`); the one
    Commerce Layer refuses makes /readyz 503 and is named; the shadow one needs none."""
    r = agency.http.get("/readyz")
    assert r.status_code == 200, r.get_json()
    checks = r.get_json()["checks"]
    assert {k for k in checks if k.startswith("commercelayer_credentials")} == {
        "commercelayer_credentials:acme",
        "commercelayer_credentials:initech",
    }
    assert checks["commercelayer_credentials:initech"].startswith("not checked yet")
    agency.fakes["initech"].client_secret = "rotated-at-commerce-layer-0123"  # ours is refused now
    for slug in ("acme", "initech"):
        agency.fakes[slug].add_order(f"ord-{slug}")
        assert agency.post(slug, f"ord-{slug}").status_code == 202
    agency.worker().drain()
    clock.advance(2)  # past the readyz answer's one-second cache
    r = agency.http.get("/readyz")
    assert r.status_code == 503 and r.get_json()["status"] == "unavailable"
    checks = r.get_json()["checks"]
    assert checks["commercelayer_credentials:initech"].startswith("organization initech: Commerce Layer refused")
    assert not checks["commercelayer_credentials:acme"].startswith("organization")  # acme's are not refused


def test_a_refused_organization_is_told_by_its_own_keys(agency, clock):
    """The worker's one error line (and the readyz reason) names the organization's table and its
    keys, not the CL_* variables an agency deployment does not set."""
    agency.fakes["initech"].client_secret = "rotated-at-commerce-layer"
    agency.fakes["initech"].add_order("ord-initech")
    assert agency.post("initech", "ord-initech").status_code == 202
    agency.worker().drain()
    clock.advance(2)
    why = agency.http.get("/readyz").get_json()["checks"]["commercelayer_credentials:initech"]
    assert "check client_id and the variable client_secret_env names" in why, why
    assert "organization initech's table in WEBHOOK_APP_ORGANIZATIONS" in why and "CL_CLIENT" not in why


def test_the_admin_page_lists_each_deliverys_organization_and_filters_by_it(agency, clock) -> None:
    for slug in SLUGS:
        assert agency.post(slug, f"ord-{slug}").status_code == 202
    keys = ("admin-key-0123456789abcdef",)
    page = create_app(agency.settings.with_overrides(admin_keys=keys), store=agency.store, clock=clock).test_client()
    assert page.post("/admin/login", data={"token": Tokens(ADMIN, keys, clock).make(ttl=3600)}).status_code == 303
    html = page.get("/admin/").get_data(as_text=True)
    assert "<th>Organization</th>" in html and '<option value="initech">' in html
    assert all(f'<td class="org">{slug}</td>' in html for slug in SLUGS)
    only = page.get("/admin/?organization=globex").get_data(as_text=True)
    assert '<td class="org">globex</td>' in only and '<td class="org">acme</td>' not in only


def test_the_start_lines_name_each_organizations_path_mode_policy_and_secrets(agency, capsys, caplog) -> None:
    """`serve`'s banner and the worker's first line in agency mode: the deployment's own `CL_*`,
    policy and mode describe no organization, so each organization is named with its own."""
    import logging
    import threading

    from webhook_app.cli.service import announce

    announce(agency.settings, "127.0.0.1:8100", agency.orgs)
    banner = capsys.readouterr().err
    assert "agency mode: 3 organizations" in banner
    assert "/webhooks/commercelayer\n" not in banner and "no Commerce Layer credentials set" not in banner
    assert "  acme: /webhooks/commercelayer/acme  mode: enforce  policy: " in banner
    assert "  globex: /webhooks/commercelayer/globex  mode: shadow  " in banner
    assert banner.count("webhook secrets: 1") == 3
    stop = threading.Event()
    stop.set()
    with caplog.at_level(logging.INFO, logger="webhook_app.worker"):
        agency.worker().run(stop)
    [started] = [r for r in caplog.records if r.message == "worker started"]
    assert started.mode == "agency"
    assert started.organizations == {"acme": "enforce", "globex": "shadow", "initech": "enforce"}


def test_an_organization_without_its_webhook_secrets_is_not_ready_and_the_others_go_on(
    agency, sqlite_store, clock, monkeypatch
) -> None:
    """Secrets come out of `webhooks register`: an organization whose variable is not set yet is
    not ready (401 to its deliveries, /readyz 503 naming it and the variable), as one
    organization without CL_WEBHOOK_SECRETS, instead of stopping the whole deployment."""
    monkeypatch.delenv("GLOBEX_WEBHOOK_SECRETS")
    http = create_app(agency.settings, store=sqlite_store, clock=clock).test_client()
    r = http.get("/readyz")
    assert r.status_code == 503, r.get_json()
    said = r.get_json()["checks"]["webhook_secrets"]
    assert "organization globex: no webhook secret configured: set GLOBEX_WEBHOOK_SECRETS" in said
    assert "acme" not in said and "initech" not in said
    for slug, status in (("acme", 202), ("globex", 401)):
        body = order_body(f"ord-{slug}")
        headers = signed_headers(body, secret=SECRETS[slug])
        assert http.post(f"/webhooks/commercelayer/{slug}", data=body, headers=headers).status_code == status


def test_replay_from_the_store_runs_again_at_its_organizations_path_and_nowhere_else(agency, clock) -> None:
    """`webhook-app replay --org acme`: the replay token names acme (the intake binds tokens to the
    organization of the path), so acme's delivery runs again at acme's path; it made tokens for the
    topic alone, which every organization's path refused with 401. Re-signed for globex and sent
    to globex's path, the same token is still refused."""
    key = "replay-key-0123456789abcdef"
    http = create_app(agency.settings.with_overrides(replay_keys=(key,)), store=agency.store, clock=clock).test_client()
    assert agency.post("acme", "oReplayed1").status_code == 202
    items = from_store(agency.store, DeliveryFilter(organization="acme"))

    class Session:  # the target's app in place of HTTP
        def post(self, url: str, *, data: bytes, headers: dict, timeout: float, allow_redirects: bool) -> Any:
            return http.post(url, data=data, headers=headers)

        def close(self) -> None:
            pass

    def replay(slug: str) -> dict[str, int]:
        r = Replayer(
            target=f"/webhooks/commercelayer/{slug}",
            secret=SECRETS[slug],
            replay_keys=(key,),
            rate=0,
            session=Session(),  # type: ignore[arg-type]
            clock=clock,
        )
        return dict(r.run(items, progress=None).by_status)

    assert replay("acme") == {"202": 1}
    assert replay("globex") == {"401": 1}
    replays = [d for d in agency.store.list_deliveries(DeliveryFilter()) if d.replay_of]
    assert [d.organization for d in replays] == ["acme"]
