"""End to end against the sandbox: the real service and the Commerce Layer double, both as processes.

A scenario with registered and guest customers across every payment source type; the sandbox's
sender fires the webhooks (losing some answers, so deliveries are redelivered after a "slow"
answer), tokens are expired mid-run, a tight API limit gives 429 bursts and a 5xx spell hits the
PATCHes. The run must end with exactly the wallet entries the policy calls for and no others.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from support.builders import NO_WALLET_TYPES, WALLET_TYPES
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

SHARED_SECRET = "e2e-shared-secret-0123456789"
CLIENT = {"client_id": "e2e-client", "client_secret": "e2e-client-secret-abcdef", "scope": "market:code:eu"}
INCLUDES = ["customer", "payment_source", "market", "line_items", "available_customer_payment_sources"]


def scenario(callback_url: str) -> dict:
    customers = [{"email": f"reg{n}@example.com", "has_password": True} for n in range(3)]
    customers.append({"email": "guest@example.com", "guest": True})
    orders = []
    for n, ptype in enumerate(list(WALLET_TYPES) * 2):
        orders.append(
            {
                "id": f"OrdReg{n:04d}",
                "customer": f"reg{n % 3}@example.com",
                "payment_source": {"type": ptype, "card_last4": f"{4000 + n}"},
            }
        )
    for n, ptype in enumerate(NO_WALLET_TYPES):
        orders.append({"id": f"OrdNoW{n:04d}", "customer": "reg0@example.com", "payment_source": {"type": ptype}})
    for n, ptype in enumerate(["stripe_payments", "adyen_payments", "wire_transfers"]):
        orders.append({"id": f"OrdGst{n:04d}", "customer": "guest@example.com", "payment_source": {"type": ptype}})
    orders.append(
        {
            "id": "OrdWalkIn1",
            "customer_email": "walk-in@example.com",
            "guest": True,
            "payment_source": {"type": "stripe_payments", "card_last4": "9999"},
        }
    )
    webhooks = [
        {
            "id": f"Hook{t.split('.')[1].title():<6}".replace(" ", "x")[:10],
            "topic": t,
            "callback_url": callback_url,
            "include_resources": INCLUDES,
            "shared_secret": SHARED_SECRET,
        }
        for t in ("orders.place", "orders.approve")
    ]
    return {
        "sandbox": {
            "token_ttl": 3600,
            "api_limits": ["12/1"],
            "endpoint_limits": ["25/10"],
            "sender": {
                "timeout": 5,
                "max_retries": 10,
                "backoff_base": 0.2,
                "backoff_factor": 2.0,
                "backoff_max": 2,
                "concurrency": 4,
            },
        },
        "clients": [CLIENT],
        "customers": customers,
        "orders": orders,
        "webhooks": webhooks,
        "markets": [{"code": "eu", "name": "Europe"}],
    }


@pytest.fixture
def stack(tmp_path):
    sb_port, svc_port = free_port(), free_port()
    svc_url = f"http://127.0.0.1:{svc_port}"
    sb_url = f"http://127.0.0.1:{sb_port}"
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps(scenario(svc_url + "/webhooks/commercelayer")))
    procs = []
    sandbox = Service(["sandbox", "--port", str(sb_port), "--seed", str(scenario_file)], {}, tmp_path / "sandbox.log")
    procs.append(sandbox)
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
        "WEBHOOK_APP_POLL_INTERVAL": "0.02",
        "WEBHOOK_APP_RETRY_BASE_SECONDS": "0.2",
        "WEBHOOK_APP_RETRY_MAX_SECONDS": "2",
        "CL_READ_TIMEOUT": "1",
        "WEBHOOK_APP_MAX_ATTEMPTS": "12",
    }
    svc = Service(["serve", "--bind", f"127.0.0.1:{svc_port}"], env, tmp_path / "service.log")
    procs.append(svc)
    wait_http(svc_url + "/healthz", proc=svc.proc)

    class Stack:
        sandbox_url = sb_url
        service_url = svc_url
        db = tmp_path / "svc.db"
        service = svc

        def control(self, method, path, body=None):
            r = requests.request(
                method, sb_url + "/_sandbox" + path, json={} if body is None and method != "GET" else body, timeout=60
            )
            assert r.status_code < 300, r.text
            return r.json()

    yield Stack()
    for p in reversed(procs):
        p.stop()


def test_wallet_entries_are_exactly_what_the_policy_calls_for(stack):
    c = stack.control
    state = c("GET", "/state")
    order_ids = [o["id"] for o in state["orders"]]
    wallet_before = {w["id"] for w in state["customer_payment_sources"]}
    # Faults: lose a third of the answers (redeliveries after a "slow" answer), a 5xx spell on PATCH.
    c(
        "PUT",
        "/faults",
        {
            "seed": 7,
            "sender": {"lose_answer_share": 0.3},
            "rules": [{"route": "orders.patch", "error_share": 1.0, "error_status": 503, "requests": 4}],
        },
    )
    c("POST", "/events", {"topic": "orders.place", "order_ids": order_ids})
    time.sleep(0.5)
    c("POST", "/tokens/expire", {})  # mid-run: the service's token stops working
    c("POST", "/events", {"topic": "orders.place", "order_ids": order_ids})  # re-trigger: same bytes
    c("POST", "/events", {"topic": "orders.approve", "order_ids": order_ids, "transition": True})
    assert c("POST", "/sender/drain", {"timeout": 60})["drained"]

    store = SQLiteStore(str(stack.db))

    def settled():
        q = store.queue_stats(now=time.time())
        return q.pending == 0 and q.running == 0

    wait_until(settled, timeout=90, interval=0.2, what="service queue drained")
    stats = c("GET", "/stats")
    final = c("GET", "/state")
    q = store.queue_stats(now=time.time())
    store.close()

    # registered customer + wallet-capable source; Braintree's are saved on orders.pending only
    # (its nonce is one-time-use: after placing, Commerce Layer refuses the save)
    expected = {
        o["id"]
        for o in final["orders"]
        if o["id"].startswith("OrdReg") and o["payment_source"]["type"] != "braintree_payments"
    }
    created = [w for w in final["customer_payment_sources"] if w["id"] not in wallet_before]
    assert sorted(w["origin_order_id"] for w in created) == sorted(expected)
    for w in created:
        order = next(o for o in final["orders"] if o["id"] == w["origin_order_id"])
        assert w["payment_source"]["id"] == order["payment_source"]["id"]
    wallet = stats.get("wallet", {})
    assert wallet.get("duplicates", 0) == 0 and wallet.get("save_refused", 0) == 0
    assert wallet.get("save_flags") == len(expected)
    assert q.dead == 0
    # the faults really happened
    assert stats["rate_limited"]["total"] > 0, stats
    assert stats["by_route"]["orders.patch"].get("503", 0) >= 1
    assert stats["tokens"]["issued"] >= 2
    assert stats["sender"]["lost_answers"] > 0
    callbacks = requests.get(stack.sandbox_url + "/_sandbox/event_callbacks", timeout=30).json()["event_callbacks"]
    assert any(cb["lost_answer"] for cb in callbacks)
    # every PATCH the sandbox accepted was valid (the sandbox validates against orderUpdate: 422 otherwise)
    assert "422" not in stats["by_route"]["orders.patch"]
    (Path(__file__).parent.parent / "test-artifacts").mkdir(exist_ok=True)
    (Path(__file__).parent.parent / "test-artifacts" / "e2e-sandbox-stats.json").write_text(
        json.dumps({"sandbox": stats, "queue": q.__dict__}, indent=1)
    )
    log = stack.service.output()
    assert SHARED_SECRET not in log and CLIENT["client_secret"] not in log
