"""Agency mode end to end: the real `webhook-app serve` and one sandbox process serving three
organizations (acme and initech in enforce mode, globex in shadow), each reached at its own
`/_org/<slug>/` prefix with its own credentials, orders, wallets and webhooks.

In order, on one setup (the service restarts between phases, the database stays):

1. each organization's eligible orders are saved in its own wallets with its own token (the
   sandbox's request log names the token of every PATCH); the shadow organization sends nothing;
2. a body signed with one organization's secret and posted to another's path is 401, nothing stored;
3. fairness: 300 orders queued in acme do not delay initech's first PATCH by more than 5 s;
4. 429s: the sandbox at Commerce Layer's test-mode limits per address (100/60 overall, 25/10 per
   endpoint), the service's `CL_RATE_LIMITS` matching, all three organizations in enforce mode
   draining together: no 429;
5. globex removed from the file, the service restarted: its stored deliveries stay readable in the admin.

The figures (fairness delay, 429 count) are printed: `pytest tests/test_e2e_agency.py -s`.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from support import signed_headers
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.policy import load_policy
from webhook_app.store import DeliveryFilter
from webhook_app.store.sqlite import SQLiteStore
from webhook_app.tokens import ADMIN, Tokens

pytestmark = pytest.mark.e2e

SLUGS = ("acme", "globex", "initech")
ADMIN_KEY = "e2e-agency-admin-key-0123456789abcdef"
POLICY = """
version = 1
[default]
action = "skip"

[[rules]]
name = "save-when-placed"
topics = ["orders.place"]
action = "save_payment_source"
"""
#: orders per organization: a few for the first phase, 10 for the 429 phase, and acme's backlog
FIRST = 3
DRAIN = 10
BACKLOG = 300
#: the first phase: no limits at the sandbox, a fast sender; the service's budget keeps acme's
#: backlog from draining in an instant (so initech's order really arrives behind it)
FAST_LIMITS = {"api_limits": ["100000/60"], "endpoint_limits": [], "auth_limits": ["30/60"]}
#: Commerce Layer's test-mode limits (FACTS.md, "Calling the API"), per client address
TEST_MODE_LIMITS = {"api_limits": ["100/60"], "endpoint_limits": ["25/10"], "auth_limits": ["30/60"]}


def secret(slug: str) -> str:
    return f"{slug}-e2e-webhook-secret-0123456789"


def client(slug: str) -> dict[str, str]:
    return {"client_id": f"{slug}-e2e-client", "client_secret": f"{slug}-e2e-client-secret-abcdef"}


def order_ids(slug: str, group: str, n: int) -> list[str]:
    return [f"Ord{slug.title()}{group}{i:03d}" for i in range(n)]


def org_scenario(slug: str, callback_url: str, includes: list[str]) -> dict[str, Any]:
    # R: orders no event announces (reconcile --org finds them); W: the circuit guard's backfill
    groups = {"A": FIRST, "B": DRAIN, "F": BACKLOG if slug == "acme" else 1, "R": 2, "W": 1}
    ids = [i for g, n in groups.items() for i in order_ids(slug, g, n)]
    return {
        "clients": [client(slug)],
        "markets": [{"id": f"Mkt{slug.title()}", "code": "eu", "name": "Europe"}],
        "customers": [{"id": f"Cust{slug.title()}{n:03d}", "email": f"c{n}@{slug}.example"} for n in range(len(ids))],
        "orders": [
            {
                "id": oid,
                "customer": f"c{n}@{slug}.example",
                "payment_source": {"type": "stripe_payments", "card_last4": f"{n:04d}"},
            }
            for n, oid in enumerate(ids)
        ],
        "webhooks": [
            {
                "id": f"Hook{slug.title()}",
                "topic": "orders.place",
                "callback_url": f"{callback_url}/{slug}",
                "include_resources": includes,
                "shared_secret": secret(slug),
            }
        ],
    }


def organizations_file(path: Path, sb_url: str, slugs: tuple[str, ...], shadow: tuple[str, ...]) -> None:
    tables = []
    for slug in slugs:
        up = slug.upper()
        tables.append(
            f'[organizations.{slug}]\nwebhook_secrets_env = "{up}_WEBHOOK_SECRETS"\n'
            f'client_id = "{client(slug)["client_id"]}"\nclient_secret_env = "{up}_CL_CLIENT_SECRET"\n'
            f'api_base = "{sb_url}/_org/{slug}/api"\nauth_url = "{sb_url}/_org/{slug}/oauth/token"\n'
            f'mode = "{"shadow" if slug in shadow else "enforce"}"\n'
        )
    path.write_text("\n".join(tables))


@dataclass
class Agency:
    tmp: Path
    sb_url: str
    svc_url: str
    env: dict[str, str] = field(repr=False)
    svc: Service | None = None
    operator_url: str = ""
    figures: dict[str, float] = field(default_factory=dict)

    # -- the sandbox, per organization --

    def control(self, slug: str, method: str, path: str, body: Any = None) -> Any:
        r = requests.request(
            method,
            f"{self.sb_url}/_org/{slug}/_sandbox{path}",
            json={} if body is None and method in ("POST", "PUT") else body,
            timeout=60,
        )
        assert r.status_code < 300, r.text
        return r.json() if r.content else None

    def fire(self, slug: str, ids: list[str]) -> list[dict]:
        return self.control(slug, "POST", "/events", {"topic": "orders.place", "order_ids": ids})["events"]

    def drain_sender(self, *slugs: str) -> None:
        for slug in slugs:
            assert self.control(slug, "POST", "/sender/drain", {"timeout": 60})["drained"]

    def patches(self, slug: str) -> list[dict]:
        return self.control(slug, "GET", "/requests?route=orders.patch&method=PATCH")["requests"]

    # -- the service --

    def start(self, slugs: tuple[str, ...], shadow: tuple[str, ...], rate_limits: str, **env: str) -> None:
        if self.svc is not None:
            self.svc.stop()
        organizations_file(self.tmp / "organizations.toml", self.sb_url, slugs, shadow)
        n = len(list(self.tmp.glob("service*.log")))
        # the operator routes on a listener of their own, as by default: the organizations' paths
        # must be served on the public one. `{operator}` in a value is that listener's URL.
        operator = f"127.0.0.1:{free_port()}"
        self.operator_url = f"http://{operator}"
        env = {k: v.replace("{operator}", self.operator_url) for k, v in env.items()}
        self.svc = Service(
            ["serve", "--bind", self.svc_url.removeprefix("http://")],
            {**self.env, "CL_RATE_LIMITS": rate_limits, "WEBHOOK_APP_OPERATOR_BIND": operator, **env},
            self.tmp / f"service{n}.log",
        )
        wait_http(self.svc_url + "/healthz", proc=self.svc.proc, timeout=60)

    def store(self) -> SQLiteStore:
        return SQLiteStore(str(self.tmp / "svc.db"))

    def settle(self, timeout: float = 60) -> None:
        store = self.store()
        try:

            def done() -> bool:
                q = store.queue_stats(now=time.time())
                return q.pending == 0 and q.running == 0

            wait_until(done, timeout=timeout, interval=0.1, what="service queue drained")
        finally:
            store.close()

    def deliveries(self, organization: str) -> list:
        store = self.store()
        try:
            return store.list_deliveries(DeliveryFilter(organization=organization, limit=1000))
        finally:
            store.close()

    def admin(self, path: str) -> requests.Response:
        token = Tokens(ADMIN, (ADMIN_KEY,), time.time).make(ttl=600)
        return requests.get(self.operator_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def agency(tmp_path_factory) -> Iterator[Agency]:
    tmp = tmp_path_factory.mktemp("agency")
    (tmp / "policy.toml").write_text(POLICY)
    includes = sorted(load_policy(tmp / "policy.toml").required_includes())
    sb_port, svc_port = free_port(), free_port()
    sb_url, svc_url = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{svc_port}"
    scenario = {
        "sandbox": {
            **FAST_LIMITS,
            "token_ttl": 3600,
            "sender": {"timeout": 5, "max_retries": 3, "backoff_base": 0.2, "concurrency": 8},
        },
        "organizations": {slug: org_scenario(slug, svc_url + "/webhooks/commercelayer", includes) for slug in SLUGS},
    }
    (tmp / "scenario.json").write_text(json.dumps(scenario))
    env = {
        "WEBHOOK_APP_ORGANIZATIONS": str(tmp / "organizations.toml"),
        "WEBHOOK_APP_POLICY": str(tmp / "policy.toml"),
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp / 'svc.db'}",
        "WEBHOOK_APP_ADMIN_KEYS": ADMIN_KEY,
        "WEBHOOK_APP_POLL_INTERVAL": "0.02",
        "WEBHOOK_APP_RETRY_BASE_SECONDS": "0.2",
        "WEBHOOK_APP_RETRY_MAX_SECONDS": "2",
    }
    for slug in SLUGS:
        env[f"{slug.upper()}_WEBHOOK_SECRETS"] = f"main:{secret(slug)}"
        env[f"{slug.upper()}_CL_CLIENT_SECRET"] = client(slug)["client_secret"]
    sandbox = Service(["sandbox", "--port", str(sb_port), "--seed", str(tmp / "scenario.json")], {}, tmp / "sb.log")
    setup = Agency(tmp, sb_url, svc_url, env)
    try:
        wait_http(sb_url + "/_sandbox/health", proc=sandbox.proc)
        setup.start(SLUGS, shadow=("globex",), rate_limits="60/1")
        yield setup
    finally:
        if setup.svc is not None:
            setup.svc.stop()
        sandbox.stop()
        print(f"\nagency figures: {setup.figures}")


def test_each_organization_saves_with_its_own_token_and_the_shadow_one_sends_nothing(agency):
    for slug in SLUGS:
        agency.fire(slug, order_ids(slug, "A", FIRST))
    agency.drain_sender(*SLUGS)
    agency.settle()
    for slug in ("acme", "initech"):
        patches = agency.patches(slug)
        assert sorted(p["path"].rsplit("/", 1)[-1] for p in patches) == order_ids(slug, "A", FIRST)
        assert {p["organization"] for p in patches} == {slug}
        # the token of every PATCH is this organization's, from its own client
        assert {(p["token"]["organization"], p["token"]["client_id"]) for p in patches} == {
            (slug, client(slug)["client_id"])
        }
        assert all(
            p["body"]["data"]["attributes"] == {"_save_payment_source_to_customer_wallet": True} for p in patches
        )
        wallet = agency.control(slug, "GET", "/state")["customer_payment_sources"]
        assert len(wallet) == FIRST
        assert len(agency.deliveries(slug)) == FIRST
    # acme's and initech's tokens differ
    tokens = {agency.patches(s)[0]["token"]["sha256"] for s in ("acme", "initech")}
    assert len(tokens) == 2
    # shadow: delivered, stored and decided, nothing sent
    assert len(agency.deliveries("globex")) == FIRST
    assert agency.patches("globex") == []
    assert agency.control("globex", "GET", "/state")["customer_payment_sources"] == []
    sent = agency.control("globex", "GET", "/requests")["requests"]
    assert {r["method"] for r in sent if r["route"] != "token"} <= {"GET"}


def test_a_body_signed_for_another_organization_is_refused_and_nothing_stored(agency):
    body = json.dumps({"data": {"id": "OrdCross", "type": "orders", "attributes": {"status": "placed"}}}).encode()
    before = {slug: len(agency.deliveries(slug)) for slug in SLUGS}
    r = requests.post(
        agency.svc_url + "/webhooks/commercelayer/initech",
        data=body,
        headers=signed_headers(body, secret=secret("acme")),
        timeout=10,
    )
    assert r.status_code == 401, r.text
    # and the other way round
    other = requests.post(
        agency.svc_url + "/webhooks/commercelayer/acme",
        data=body,
        headers=signed_headers(body, secret=secret("initech")),
        timeout=10,
    )
    assert other.status_code == 401
    assert {slug: len(agency.deliveries(slug)) for slug in SLUGS} == before


def test_the_public_listener_serves_each_organizations_path_and_nothing_of_the_operators(agency):
    """The operator routes answer on their own listener (the default); the organizations' paths
    must still be served on the public one (they were answered 404 there)."""
    body = json.dumps({"data": {"id": "OrdPublic", "type": "orders", "attributes": {"status": "placed"}}}).encode()
    r = requests.post(
        agency.svc_url + "/webhooks/commercelayer/acme",
        data=body,
        headers={**signed_headers(body, secret=secret("acme")), "X-CommerceLayer-Topic": "orders.place"},
        timeout=10,
    )
    assert r.status_code == 202, r.text
    assert any(d.order_id == "OrdPublic" for d in agency.deliveries("acme"))
    # an organization that is not configured: the intake's own answer, not the front's
    unknown = requests.post(agency.svc_url + "/webhooks/commercelayer/nosuchorg", data=body, timeout=10)
    assert unknown.status_code == 404 and "no such route on this listener" not in unknown.text
    for path in ("/readyz", "/metrics", "/admin", "/webhooks/commercelayer/acme/x", "/webhooks/commercelayer/ACME"):
        off = requests.get(agency.svc_url + path, timeout=10)
        assert off.status_code == 404 and "no such route on this listener" in off.text, path
    assert requests.get(agency.operator_url + "/readyz", timeout=10).status_code in (200, 503)


def test_a_backlog_in_one_organization_does_not_delay_another(agency):
    backlog = order_ids("acme", "F", BACKLOG)
    agency.fire("acme", backlog)
    agency.drain_sender("acme")
    wait_until(lambda: len(agency.deliveries("acme")) >= FIRST + BACKLOG, timeout=60, what="acme's backlog stored")
    (event,) = agency.fire("initech", order_ids("initech", "F", 1))
    fired_at = _at(event["created_at"])
    wait_until(lambda: len(agency.patches("initech")) > FIRST, timeout=30, what="initech's PATCH")
    first = agency.patches("initech")[FIRST]
    delay = _at(first["time"]) - fired_at
    acme_done = [p for p in agency.patches("acme") if p["path"].rsplit("/", 1)[-1] in set(backlog)]
    # (each organization numbers its own log: compare times, not `seq`)
    acme_before = sum(1 for p in acme_done if _at(p["time"]) < _at(first["time"]))
    agency.figures.update(fairness_delay_s=round(delay, 3), acme_backlog_left=BACKLOG - acme_before)
    print(
        f"\nfairness: initech's first PATCH {delay:.3f} s after its event, "
        f"{BACKLOG - acme_before} of acme's {BACKLOG} orders still waiting"
    )
    assert BACKLOG - acme_before > 50, "acme's backlog was drained already: the measure says nothing"
    assert delay <= 5.0
    agency.settle(timeout=120)
    assert len([p for p in agency.patches("acme") if p["path"].rsplit("/", 1)[-1] in set(backlog)]) == BACKLOG


def test_three_organizations_draining_together_get_no_429(agency):
    for slug in SLUGS:
        # the same windows in every organization: they count in one budget for 127.0.0.1 (new
        # windows, so the first phase's calls do not count in them)
        agency.control(slug, "PUT", "/config", TEST_MODE_LIMITS)
        agency.control(slug, "DELETE", "/stats")
    agency.start(SLUGS, shadow=(), rate_limits="100/60,25/10")
    started = time.monotonic()
    for slug in SLUGS:
        agency.fire(slug, order_ids(slug, "B", DRAIN))
    agency.drain_sender(*SLUGS)
    agency.settle(timeout=90)
    took = time.monotonic() - started
    stats = {slug: agency.control(slug, "GET", "/stats") for slug in SLUGS}
    refused = sum(s.get("rate_limited", {}).get("total", 0) for s in stats.values())
    calls = sum(s.get("requests", {}).get("total", 0) for s in stats.values())
    agency.figures.update(rate_limited=refused, calls=calls, drain_s=round(took, 1))
    print(f"\n429s: {refused} in {calls} calls from 3 organizations draining {3 * DRAIN} orders in {took:.1f} s")
    assert calls > 25  # more than one 10 s window's worth: the shared budget had to space them
    for slug in SLUGS:
        saved = [p for p in agency.patches(slug) if p["path"].rsplit("/", 1)[-1] in set(order_ids(slug, "B", DRAIN))]
        assert len(saved) == DRAIN and {p["status"] for p in saved} == {200}
    assert refused == 0


def test_a_removed_organization_stays_readable_in_the_admin(agency):
    stored = len(agency.deliveries("globex"))
    assert stored >= FIRST
    agency.start(("acme", "initech"), shadow=(), rate_limits="100/60,25/10")
    got = agency.admin("/admin/deliveries?organization=globex&limit=200")
    assert got.status_code == 200, got.text
    items = got.json()["deliveries"]
    assert len(items) == stored and {d["organization"] for d in items} == {"globex"}
    body = b'{"data":{"id":"OrdGone","type":"orders"}}'
    r = requests.post(
        agency.svc_url + "/webhooks/commercelayer/globex",
        data=body,
        headers=signed_headers(body, secret=secret("globex")),
        timeout=10,
    )
    assert r.status_code == 404


def test_trigger_takes_the_organization(agency):
    """`trigger --org SLUG` asks that organization, with its credentials, to send an event again."""
    env = {"PATH": "/usr/bin:/bin", **agency.env}
    oid = order_ids("initech", "A", 1)[0]

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "webhook_app", "trigger", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    without = cli("--order", oid, "--topic", "orders.place")
    assert without.returncode != 0 and "--org" in without.stderr and without.stderr.count("\n") == 1
    r = cli("--org", "initech", "--order", oid, "--topic", "orders.place")
    assert r.returncode == 0, r.stderr
    (patched,) = agency.control("initech", "GET", "/requests?route=events.patch")["requests"]
    assert patched["token"]["client_id"] == client("initech")["client_id"]
    assert agency.control("acme", "GET", "/requests?route=events")["requests"] == []
    # initech's own order is unknown to acme
    assert cli("--org", "acme", "--order", oid, "--topic", "orders.place").returncode != 0


def _cli(agency: Agency, *args: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "webhook_app", *args]
    full = {"PATH": "/usr/bin:/bin", **agency.env, **env}
    return subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=120)


def _one_line_naming_the_organizations(r: subprocess.CompletedProcess) -> bool:
    return r.returncode == 2 and r.stderr.count("\n") == 1 and "--org" in r.stderr and "acme, initech" in r.stderr


def test_reconcile_takes_the_organization_and_queues_under_it(agency):
    for slug in SLUGS:  # the test-mode windows of the 429 phase are no longer the point
        agency.control(slug, "PUT", "/config", FAST_LIMITS)
    assert _one_line_naming_the_organizations(_cli(agency, "reconcile", "--since", "1h"))
    r = _cli(agency, "reconcile", "--org", "initech", "--since", "1h")
    assert r.returncode == 0, r.stderr
    missing = order_ids("initech", "R", 2) + order_ids("initech", "W", 1)
    assert sorted(r.stdout.split()) == sorted(missing)
    stored = {d.order_id: d.organization for d in agency.deliveries("initech")}
    assert all(stored.get(oid) == "initech" for oid in missing)
    assert not {oid for oid in order_ids("acme", "R", 2)} & {d.order_id for d in agency.deliveries("acme")}
    # the running service acts on them with initech's token
    wanted = set(order_ids("initech", "R", 2))
    wait_until(
        lambda: wanted <= {p["path"].rsplit("/", 1)[-1] for p in agency.patches("initech")},
        timeout=30,
        what="initech's reconciled orders saved",
    )
    saved = [p for p in agency.patches("initech") if p["path"].rsplit("/", 1)[-1] in wanted]
    assert {p["token"]["client_id"] for p in saved} == {client("initech")["client_id"]}
    # a second run finds nothing missing in initech (its own jobs count), acme's R orders still missing
    again = _cli(agency, "reconcile", "--org", "acme", "--since", "1h", "--dry-run")
    assert again.returncode == 0, again.stderr
    assert sorted(again.stdout.split()) == sorted(order_ids("acme", "R", 2) + order_ids("acme", "W", 1))


def test_wallet_commands_take_the_organization(agency):
    assert _one_line_naming_the_organizations(_cli(agency, "wallet", "duplicates"))
    assert _one_line_naming_the_organizations(_cli(agency, "wallet", "expired"))
    customer = agency.control("initech", "GET", "/state")["customer_payment_sources"][0]["customer_id"]
    mine = _cli(agency, "wallet", "duplicates", "--org", "initech", "--customer", customer)
    assert mine.returncode == 0, mine.stderr
    assert "1 wallet entries of 1 customers read" in mine.stderr
    theirs = _cli(agency, "wallet", "expired", "--org", "acme", "--customer", customer)
    assert theirs.returncode == 0, theirs.stderr
    assert "0 wallet entries of 0 customers read" in theirs.stderr
    wallet_reads = agency.control("initech", "GET", "/requests?route=customer_payment_sources")["requests"]
    assert wallet_reads and {r["token"]["client_id"] for r in wallet_reads} == {client("initech")["client_id"]}


def test_webhooks_watch_backfills_under_the_organization(agency):
    """acme's circuit opens while the service is down; `webhooks watch --org acme` resets it and
    queues the orders acme has that never reached us (reconcile --dry-run left them) under acme."""
    assert agency.svc is not None
    agency.svc.stop()
    agency.svc = None
    agency.control("acme", "PUT", "/config", {"sender": {"circuit_threshold": 1, "max_retries": 0}})
    (missed,) = order_ids("acme", "W", 1)
    agency.fire("acme", [missed])
    agency.drain_sender("acme")
    (hook,) = agency.control("acme", "GET", "/state")["webhooks"]
    assert hook["circuit_state"] == "open"
    assert _one_line_naming_the_organizations(_cli(agency, "webhooks", "watch"))
    env = {"WEBHOOK_APP_CIRCUIT_AUTO_RESET": "on", "WEBHOOK_APP_CIRCUIT_BACKFILL_MARGIN": "3600"}
    # Without a health URL the guard cannot check the intake and resets nothing.
    r = _cli(agency, "webhooks", "watch", "--org", "acme", "--json", **env)
    assert r.returncode == 0 and not json.loads(r.stdout)["reset"], r.stdout + r.stderr
    # The service is down on purpose here (the orders must miss it): a stand-in answering 200
    # is the health URL (the intake's real /readyz is used by the worker's guard below).
    env["WEBHOOK_APP_CIRCUIT_HEALTH_URL"] = agency.sb_url + "/_sandbox/health"
    r = _cli(agency, "webhooks", "watch", "--org", "acme", "--json", **env)
    assert r.returncode == 0, r.stderr
    (row,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert row["reset"] and sorted(row["backfilled"]) == sorted(order_ids("acme", "R", 2) + [missed])
    assert {d.organization for d in agency.deliveries("acme") if d.order_id == missed} == {"acme"}
    assert missed not in {d.order_id for d in agency.deliveries("")}
    with closing(sqlite3.connect(agency.tmp / "svc.db")) as db:
        ops = db.execute(
            "SELECT organization, kind FROM operations WHERE kind IN ('backfill', 'circuit_reset')"
        ).fetchall()
    assert sorted(ops) == [("acme", "backfill"), ("acme", "circuit_reset")]


def test_the_workers_circuit_guard_resets_and_backfills_each_organization(agency):
    """Agency mode runs one circuit guard per enforce-mode organization, with that organization's
    client: initech's circuit, opened while the service was down, is reset at start and the order
    it missed is queued under initech and saved with initech's token."""
    assert agency.svc is None  # stopped by the watch test
    agency.control("initech", "PUT", "/config", {"sender": {"circuit_threshold": 1, "max_retries": 0}})
    (missed,) = order_ids("initech", "G", 1)  # an order placed now, while the service is down
    agency.control(
        "initech",
        "POST",
        "/scenario?mode=merge",
        {
            "customers": [{"id": "CustInitechG00", "email": "g0@initech.example"}],
            "orders": [
                {
                    "id": missed,
                    "customer": "g0@initech.example",
                    "payment_source": {"type": "stripe_payments", "card_last4": "4242"},
                }
            ],
        },
    )
    agency.fire("initech", [missed])
    agency.drain_sender("initech")
    (hook,) = agency.control("initech", "GET", "/state")["webhooks"]
    assert hook["circuit_state"] == "open"
    agency.start(
        ("acme", "initech"),
        shadow=(),
        rate_limits="100/60,25/10",
        WEBHOOK_APP_CIRCUIT_AUTO_RESET="on",
        WEBHOOK_APP_CIRCUIT_HEALTH_URL="{operator}/readyz",
        WEBHOOK_APP_CIRCUIT_BACKFILL_MARGIN="3600",
        WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL="1",
    )
    wait_until(
        lambda: missed in {p["path"].rsplit("/", 1)[-1] for p in agency.patches("initech")},
        timeout=60,
        what="initech's missed order saved after the guard's backfill",
    )
    (hook,) = agency.control("initech", "GET", "/state")["webhooks"]
    assert hook["circuit_state"] == "closed"
    (patch,) = [p for p in agency.patches("initech") if p["path"].endswith(missed)]
    assert patch["token"]["client_id"] == client("initech")["client_id"]
    assert {d.organization for d in agency.deliveries("initech") if d.order_id == missed} == {"initech"}
    resets = agency.control("initech", "GET", "/requests?route=webhooks.patch")["requests"]
    assert resets and {r["token"]["client_id"] for r in resets} == {client("initech")["client_id"]}
    assert all(r["body"]["data"]["attributes"] == {"_reset_circuit": True} for r in resets)
