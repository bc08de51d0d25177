"""End to end: a customer's anonymization, sent by the sandbox, honoured by a real `serve`.

Two customers with stored deliveries (their orders, and an order placed with the first one's
address by nobody logged in); the first asks to be anonymized (`_request_anonymization`), the
sandbox sends `customers.anonymization_started` and then `_completed`. Every stored body of the
first customer goes (by id and by e-mail), the second's stay, counted before and after; the
operations log and the metrics say so; a repeated `_completed` changes nothing and is recorded once.
With WEBHOOK_APP_HONOUR_ANONYMIZATION=false nothing is erased.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import requests
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.store import DeliveryFilter
from webhook_app.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

SHARED_SECRET = "e2e-anonymization-secret-0123456789"
CLIENT = {"client_id": "anon-client", "client_secret": "anon-client-secret-abcdef", "scope": "market:code:eu"}
ANON_TOPICS = [f"customers.anonymization_{s}" for s in ("started", "completed", "cancelled", "failed")]


def scenario(callback_url: str) -> dict:
    hooks = [("HookPlaceA", "orders.place", ["customer", "payment_source"])]
    hooks += [(f"HookAnon{n}a", t, []) for n, t in enumerate(ANON_TOPICS)]
    return {
        "clients": [CLIENT],
        "markets": [{"code": "eu", "name": "Europe"}],
        "customers": [
            {"id": "CustAdaAaa", "email": "ada@example.com"},
            {"id": "CustBobBbb", "email": "bob@example.com"},
        ],
        "orders": [
            *(
                {"id": f"OrdAda{n:04d}", "customer": "ada@example.com", "payment_source": {"type": "stripe_payments"}}
                for n in range(2)
            ),
            *(
                {"id": f"OrdBob{n:04d}", "customer": "bob@example.com", "payment_source": {"type": "stripe_payments"}}
                for n in range(2)
            ),
            # placed with Ada's address by nobody logged in: found by e-mail only
            {
                "id": "OrdWalkIn1",
                "customer_email": "ada@example.com",
                "guest": True,
                "payment_source": {"type": "wire_transfers"},
            },
        ],
        "webhooks": [
            {
                "id": i,
                "topic": t,
                "callback_url": callback_url,
                "include_resources": inc,
                "shared_secret": SHARED_SECRET,
            }
            for i, t, inc in hooks
        ],
    }


@pytest.fixture(params=["on", "off"])
def stack(request, tmp_path):
    sb_port, svc_port = free_port(), free_port()
    sb_url, svc_url = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{svc_port}"
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps(scenario(svc_url + "/webhooks/commercelayer")))
    sandbox = Service(["sandbox", "--port", str(sb_port), "--seed", str(scenario_file)], {}, tmp_path / "sandbox.log")
    procs = [sandbox]
    try:
        wait_http(sb_url + "/_sandbox/health", proc=sandbox.proc)
        env = {
            "CL_WEBHOOK_SECRETS": f"sandbox:{SHARED_SECRET}",
            "CL_CLIENT_ID": CLIENT["client_id"],
            "CL_CLIENT_SECRET": CLIENT["client_secret"],
            "CL_SCOPE": CLIENT["scope"],
            "CL_API_BASE": sb_url + "/api",
            "CL_AUTH_URL": sb_url + "/oauth/token",
            "WEBHOOK_APP_MODE": "enforce",
            "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'svc.db'}",
            "WEBHOOK_APP_POLL_INTERVAL": "0.05",
            "WEBHOOK_APP_HONOUR_ANONYMIZATION": "true" if request.param == "on" else "false",
        }
        svc = Service(
            ["serve", "--bind", f"127.0.0.1:{svc_port}"],
            {**env, "WEBHOOK_APP_OPERATOR_BIND": "public"},
            tmp_path / "service.log",
        )
        procs.append(svc)
        wait_http(svc_url + "/healthz", proc=svc.proc)

        class Stack:
            honour = request.param == "on"
            db = tmp_path / "svc.db"
            service_url = svc_url
            sandbox_url = sb_url

            @staticmethod
            def control(method, path, body=None):
                r = requests.request(
                    method,
                    sb_url + "/_sandbox" + path,
                    json={} if body is None and method != "GET" else body,
                    timeout=60,
                )
                assert r.status_code < 300, r.text
                return r.json()

            @staticmethod
            def settle(store):
                assert Stack.control("POST", "/sender/drain", {"timeout": 30})["drained"]

                def done():
                    q = store.queue_stats(now=time.time())
                    return q.pending == 0 and q.running == 0

                wait_until(done, timeout=30, interval=0.1, what="service queue drained")

        yield Stack()
    finally:
        for p in reversed(procs):
            p.stop()


def request_anonymization(stack, customer_id):
    """`_request_anonymization: true` through the API, as an integration would send it."""
    token = requests.post(
        stack.sandbox_url + "/oauth/token", json={"grant_type": "client_credentials", **CLIENT}, timeout=30
    ).json()["access_token"]
    api = "application/vnd.api+json"
    r = requests.patch(
        f"{stack.sandbox_url}/api/customers/{customer_id}",
        data=json.dumps(
            {"data": {"type": "customers", "id": customer_id, "attributes": {"_request_anonymization": True}}}
        ),
        headers={"Accept": api, "Content-Type": api, "Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def bodies(store):
    """Stored deliveries by owner: Ada's (her orders, the walk-in order with her address, her
    customer events) and Bob's; True where the body is still there."""
    out: dict[str, dict[int, bool]] = {"ada": {}, "bob": {}}
    for d in store.list_deliveries(DeliveryFilter(limit=1000, with_body=True)):
        owner = "bob" if "Bob" in d.resource_id else "ada"
        out[owner][d.id] = bool(d.body) and bool(d.headers)
    return out


def metric(stack, event, outcome):
    text = requests.get(stack.service_url + "/metrics", timeout=30).text
    m = re.search(rf'^webhook_app_anonymizations_total{{event="{event}",outcome="{outcome}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_completed_anonymization_erases_the_customers_bodies_and_keeps_the_others(stack):
    c = stack.control
    store = SQLiteStore(str(stack.db))
    try:
        c(
            "POST",
            "/events",
            {
                "topic": "orders.place",
                "order_ids": ["OrdAda0000", "OrdAda0001", "OrdBob0000", "OrdBob0001", "OrdWalkIn1"],
            },
        )
        request_anonymization(stack, "CustAdaAaa")
        c("POST", "/events", {"topic": ANON_TOPICS[0], "customer_id": "CustAdaAaa", "transition": True})
        stack.settle(store)
        before = bodies(store)
        assert len(before["ada"]) == 4 and all(before["ada"].values())  # 3 orders + the started event
        assert len(before["bob"]) == 2 and all(before["bob"].values())

        c("POST", "/events", {"topic": ANON_TOPICS[1], "customer_id": "CustAdaAaa", "transition": True})
        stack.settle(store)
        after = bodies(store)
        ops = store.list_operations(kind="anonymization")
        assert after["bob"] == before["bob"]  # Bob's kept, every one
        if not stack.honour:
            assert set(after["ada"]) > set(before["ada"]) and all(after["ada"].values())  # nothing erased
            assert ops == [] and metric(stack, "completed", "disabled") == 1
            return
        assert len(after["ada"]) == 5 and not any(after["ada"].values())  # all of Ada's, the completed one too
        assert [(o.subject, o.detail["event"]) for o in ops] == [("CustAdaAaa", "completed"), ("CustAdaAaa", "started")]
        assert ops[0].detail["removed"] == 5 and ops[0].detail["by"] == "customer id and email"
        assert metric(stack, "completed", "erased") == 1 and metric(stack, "started", "recorded") == 1

        # Commerce Layer sends it again (same bytes): a duplicate, nothing more erased or recorded
        c("POST", "/events", {"topic": ANON_TOPICS[1], "customer_id": "CustAdaAaa"})
        stack.settle(store)
        assert bodies(store) == after
        assert len(store.list_operations(kind="anonymization")) == 2
        assert metric(stack, "completed", "erased") == 1
        log = (stack.db.parent / "service.log").read_text()
        assert "ada@example.com" not in json.dumps([o.detail for o in ops]) and SHARED_SECRET not in log
    finally:
        store.close()
