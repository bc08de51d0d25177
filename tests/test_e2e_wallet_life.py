"""End to end against the sandbox, real processes: a wallet's life after the save.

`webhook-app serve` and the sandbox (`webhook-app sandbox`) as processes, webhooks registered with
the policy's `include_resources`. In order, on one setup:

1. reuse: a customer with an expired and a valid card reuses the valid one (the newest entry is
   the expired one); a customer with only an expired card is skipped, the reason naming it;
2. activity: after a few saves, reuses and refusals (and `wallet expired --delete --yes`), the
   admin API, the admin page and /metrics count them;
3. trigger: `webhook-app trigger` makes the sandbox send an order's event again, signed, to the
   running service: the same body is a duplicate, a changed order a new delivery.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from support import base_env
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.policy import load_policy
from webhook_app.store.sqlite import SQLiteStore
from webhook_app.tokens import ADMIN, Tokens

pytestmark = pytest.mark.e2e

SHARED_SECRET = "e2e-life-shared-secret-0123456789"
ADMIN_KEY = "e2e-life-admin-key-0123456789abcdef"
CLIENT = {"client_id": "e2e-life-client", "client_secret": "e2e-life-client-secret-abcdef"}
MARKET = "MktEuropeA"
POLICY = """
version = 1
[default]
action = "skip"

[[rules]]
name = "reuse-when-pending"
topics = ["orders.pending"]
action = "use_wallet_source"
strategy = "newest"

[[rules]]
name = "save-when-placed"
topics = ["orders.place"]
action = "save_payment_source"
"""


def card(month: int, year: int, last4: str) -> dict:
    return {
        "payment_source_type": "stripe_payments",
        "card_last4": last4,
        "card_exp_month": month,
        "card_exp_year": year,
    }


def scenario(callback_url: str, includes: list[str]) -> dict:
    emails = ["ann", "bob", "carl", "dora"]
    stripe = {"type": "stripe_payments"}
    return {
        "sandbox": {
            "token_ttl": 3600,
            "api_limits": ["1000/60"],
            "endpoint_limits": ["500/10"],
            "sender": {"timeout": 5, "max_retries": 3, "backoff_base": 0.2, "concurrency": 2},
        },
        "clients": [CLIENT],
        "markets": [{"id": MARKET, "code": "eu", "name": "Europe"}],
        "customers": [{"id": f"Cust{e.title()}", "email": f"{e}@example.com"} for e in emails],
        "orders": [
            {"id": "OrdAnnPend", "customer": "ann@example.com", "status": "pending", "payment_source": stripe},
            {"id": "OrdBobPend", "customer": "bob@example.com", "status": "pending", "payment_source": stripe},
            {"id": "OrdCarlPla", "customer": "carl@example.com", "payment_source": {**stripe, "card_last4": "5556"}},
            {"id": "OrdDoraPla", "customer": "dora@example.com", "payment_source": {"type": "paypal_payments"}},
        ],
        "customer_payment_sources": [
            {
                "id": "WalAnnValid",
                "customer": "ann@example.com",
                "created_at": "2025-01-01T00:00:00Z",
                **card(12, 2040, "4242"),
            },
            # the newest of Ann's entries, and expired: `newest` must pass over it
            {
                "id": "WalAnnExpir",
                "customer": "ann@example.com",
                "created_at": "2026-01-01T00:00:00Z",
                **card(1, 2024, "1881"),
            },
            {
                "id": "WalBobExpir",
                "customer": "bob@example.com",
                "created_at": "2025-06-01T00:00:00Z",
                **card(2, 2024, "0005"),
            },
        ],
        "webhooks": [
            {
                "id": f"Hook{n}",
                "topic": topic,
                "callback_url": callback_url,
                "include_resources": includes,
                "shared_secret": SHARED_SECRET,
            }
            for n, topic in enumerate(("orders.pending", "orders.place"))
        ],
    }


@dataclass
class Setup:
    tmp: Path
    sb_url: str
    svc_url: str
    env: dict[str, str]

    def control(self, method: str, path: str, body=None) -> dict:
        r = requests.request(
            method, self.sb_url + "/_sandbox" + path, json={} if body is None and method != "GET" else body, timeout=60
        )
        assert r.status_code < 300, r.text
        return r.json()

    def fire(self, topic: str, *orders: str) -> None:
        self.control("POST", "/events", {"topic": topic, "order_ids": list(orders)})
        assert self.control("POST", "/sender/drain", {"timeout": 60})["drained"]
        self.settle()

    def settle(self) -> None:
        store = SQLiteStore(str(self.tmp / "svc.db"))
        try:

            def done() -> bool:
                q = store.queue_stats(now=time.time())
                return q.pending == 0 and q.running == 0

            wait_until(done, timeout=60, interval=0.1, what="service queue drained")
        finally:
            store.close()

    def decisions(self, order_id: str) -> list[dict]:
        store = SQLiteStore(str(self.tmp / "svc.db"))
        try:
            return _decisions(store, order_id)
        finally:
            store.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = {**base_env(), **self.env}
        return subprocess.run(
            [sys.executable, "-m", "webhook_app", *args], capture_output=True, text=True, env=env, timeout=120
        )

    def admin(self, path: str) -> requests.Response:
        token = Tokens(ADMIN, (ADMIN_KEY,), time.time).make(ttl=600)
        return requests.get(self.svc_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _decisions(store: SQLiteStore, order_id: str) -> list[dict]:
    from webhook_app.store import DeliveryFilter

    out = []
    for d in store.list_deliveries(DeliveryFilter(order_id=order_id, limit=50)):
        full = store.get_delivery(d.id)
        assert full is not None
        out += full.decisions
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("wallet-life")
    (tmp / "policy.toml").write_text(textwrap.dedent(POLICY))
    includes = load_policy(tmp / "policy.toml").required_includes()
    assert "available_customer_payment_sources.payment_source" in includes and "market" in includes
    yield from running(tmp, scenario, includes)


def running(tmp: Path, make_scenario: Callable[[str, Any], Any], includes: Any) -> Iterator[Setup]:
    """The sandbox seeded with `make_scenario(callback URL, includes)` and `serve` in enforce mode
    on it (tmp's policy.toml), both stopped when the caller is done."""
    sb_port, svc_port = free_port(), free_port()
    sb_url, svc_url = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{svc_port}"
    (tmp / "scenario.json").write_text(json.dumps(make_scenario(svc_url + "/webhooks/commercelayer", includes)))
    env = {
        "CL_WEBHOOK_SECRETS": f"sandbox:{SHARED_SECRET}",
        "CL_CLIENT_ID": CLIENT["client_id"],
        "CL_CLIENT_SECRET": CLIENT["client_secret"],
        "CL_API_BASE": sb_url + "/api",
        "CL_AUTH_URL": sb_url + "/oauth/token",
        "WEBHOOK_APP_MODE": "enforce",
        "WEBHOOK_APP_POLICY": str(tmp / "policy.toml"),
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp / 'svc.db'}",
        "WEBHOOK_APP_ADMIN_KEYS": ADMIN_KEY,
        "WEBHOOK_APP_POLL_INTERVAL": "0.02",
        "WEBHOOK_APP_RETRY_BASE_SECONDS": "0.2",
        "WEBHOOK_APP_RETRY_MAX_SECONDS": "2",
    }
    procs = []
    try:
        sandbox = Service(["sandbox", "--port", str(sb_port), "--seed", str(tmp / "scenario.json")], {}, tmp / "sb.log")
        procs.append(sandbox)
        wait_http(sb_url + "/_sandbox/health", proc=sandbox.proc)
        svc = Service(
            ["serve", "--bind", f"127.0.0.1:{svc_port}"],
            {**env, "WEBHOOK_APP_OPERATOR_BIND": "public"},
            tmp / "service.log",
        )
        procs.append(svc)
        wait_http(svc_url + "/healthz", proc=svc.proc)
        yield Setup(tmp, sb_url, svc_url, env)
    finally:
        for p in reversed(procs):
            p.stop()


def test_reuse_passes_over_an_expired_card_and_skips_when_only_expired_ones_are_left(setup):
    setup.fire("orders.pending", "OrdAnnPend", "OrdBobPend")
    (ann,) = setup.decisions("OrdAnnPend")
    assert (ann["action"], ann["outcome"], ann["wallet_entry_id"]) == ("use_wallet_source", "applied", "WalAnnValid")
    assert "WalAnnExpir (card expired 01/2024)" in ann["reason"]
    (bob,) = setup.decisions("OrdBobPend")
    assert (bob["action"], bob["outcome"], bob["guard"]) == ("skip", "guarded", "wallet_card_expired")
    assert "WalBobExpir (card expired 02/2024)" in bob["reason"]
    patches = setup.control("GET", "/requests?route=orders.patch")["requests"]
    assert [(p["path"].rsplit("/", 1)[-1], p["body"]["data"]["attributes"]) for p in patches] == [
        ("OrdAnnPend", {"_customer_payment_source_id": "WalAnnValid"})
    ]


def test_activity_is_counted_on_the_admin_api_page_and_metrics(setup):
    setup.fire("orders.place", "OrdCarlPla", "OrdDoraPla")  # one save, one refused (paypal: no wallet flow)
    r = setup.cli("wallet", "expired", "--delete", "--yes")
    assert r.returncode == 0, r.stderr
    assert "2 deleted" in r.stderr
    got = setup.admin("/admin/wallet-activity?days=2")
    assert got.status_code == 200, got.text
    doc = got.json()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    (row,) = [r for r in doc["rows"] if r["market_id"] == MARKET]
    assert row == {
        "day": today,
        "market_id": MARKET,
        "saved": 1,
        "reused": 1,
        "save_refused": {"no_wallet_flow": 1},
        "reuse_refused": {"wallet_card_expired": 1},
        "expired_found": 2,
        "expired_removed": 2,
    }
    assert doc["totals"]["saved"] == 1 and doc["totals"]["reuse_refused"] == {"wallet_card_expired": 1}
    assert setup.admin("/admin/wallet-activity?days=0").status_code == 400
    page = requests.get(
        setup.svc_url + "/admin/",
        cookies={"webhook_app_admin": Tokens(ADMIN, (ADMIN_KEY,), time.time).make(ttl=600)},
        timeout=10,
    )
    assert page.status_code == 200 and 'id="wallet-activity"' in page.text
    assert "wallet_card_expired 1" in page.text and "no_wallet_flow 1" in page.text
    metrics = requests.get(setup.svc_url + "/metrics", timeout=10).text
    for line in (
        'webhook_app_wallet_activity_total{activity="saved",reason=""} 1.0',
        'webhook_app_wallet_activity_total{activity="reused",reason=""} 1.0',
        'webhook_app_wallet_activity_total{activity="save_refused",reason="no_wallet_flow"} 1.0',
        'webhook_app_wallet_activity_total{activity="reuse_refused",reason="wallet_card_expired"} 1.0',
        'webhook_app_wallet_activity_total{activity="expired_removed",reason="card_expired"} 2.0',
        'webhook_app_wallet_expired_entries{state="expired"} 2.0',
    ):
        assert line in metrics, line
    assert MARKET not in metrics  # no market label: per market is the admin page's


def test_trigger_sends_the_event_again_duplicate_when_unchanged_new_when_changed(setup):
    def deliveries(order_id: str) -> int:
        store = SQLiteStore(str(setup.tmp / "svc.db"))
        try:
            from webhook_app.store import DeliveryFilter

            return len(store.list_deliveries(DeliveryFilter(order_id=order_id, limit=50)))
        finally:
            store.close()

    # Dora's order did not change since its orders.place: the same bytes, a duplicate
    assert deliveries("OrdDoraPla") == 1
    r = setup.cli("trigger", "--order", "OrdDoraPla", "--topic", "orders.place")
    assert r.returncode == 0, r.stderr
    assert "OrdDoraPla" in r.stdout
    assert setup.control("POST", "/sender/drain", {"timeout": 60})["drained"]
    setup.settle()
    assert deliveries("OrdDoraPla") == 1
    dora = [c for c in setup.control("GET", "/event_callbacks")["event_callbacks"] if '"OrdDoraPla"' in c["body"]]
    assert [c["response_code"] for c in dora] == [202, 200]  # accepted, then a duplicate
    assert dora[0]["body"] == dora[1]["body"] and dora[0]["event_id"] == dora[1]["event_id"]
    # Carl's order changed since (its card was saved into the wallet): a new delivery
    r = setup.cli("trigger", "--order", "OrdCarlPla", "--topic", "orders.place")
    assert r.returncode == 0, r.stderr
    assert setup.control("POST", "/sender/drain", {"timeout": 60})["drained"]
    setup.settle()
    assert deliveries("OrdCarlPla") == 2
    carl = [c for c in setup.control("GET", "/event_callbacks")["event_callbacks"] if '"OrdCarlPla"' in c["body"]]
    assert [c["response_code"] for c in carl] == [202, 202]
    # an event the order does not have: one line, exit 2
    r = setup.cli("trigger", "--order", "OrdCarlPla", "--topic", "orders.approve")
    assert r.returncode == 2 and "has no orders.approve event" in r.stderr and "orders.place" in r.stderr
    # by event id
    event_id = dora[0]["event_id"]
    r = setup.cli("trigger", "--event", event_id)
    assert r.returncode == 0 and event_id in r.stdout
    assert setup.control("POST", "/sender/drain", {"timeout": 60})["drained"]
    setup.settle()
    assert deliveries("OrdDoraPla") == 1
