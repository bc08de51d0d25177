"""End to end: Commerce Layer's circuit opens while the intake is down; the guard resets it and backfills.

Real processes: the sandbox (whose sender models the circuit: 30 consecutive failures open it and
nothing more is sent until `_reset_circuit`), `webhook-app web` and `webhook-app worker` with
the circuit guard on. The web process is stopped, so every delivery fails (connection refused);
the circuit opens; the guard must leave it open while the intake is down, then, once `web` is
back and `/readyz` answers, reset it and reconcile the gap: every order placed while nothing
reached us is flagged exactly once (one PATCH per order at the sandbox), and the reset and the
backfill are in the operations log.
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

SHARED_SECRET = "circuit-shared-secret-0123456789"
CLIENT = {"client_id": "circuit-client", "client_secret": "circuit-client-secret-abcdef", "scope": "market:code:eu"}
INCLUDES = ["customer", "payment_source", "market", "line_items", "available_customer_payment_sources"]
MISSED = [f"OrdMiss{n:03d}" for n in range(6)]
LATE = "OrdLate000"  # placed while the circuit is already open: never even attempted
BEFORE = "OrdOkay000"  # delivered normally before the outage


def scenario(callback_url: str) -> dict:
    customers = [{"email": f"reg{n}@example.com", "has_password": True} for n in range(3)]
    orders = [
        {
            "id": oid,
            "customer": f"reg{n % 3}@example.com",
            "status": "pending",
            "payment_source": {"type": "stripe_payments", "card_last4": f"{4100 + n}"},
        }
        for n, oid in enumerate([BEFORE, *MISSED, LATE])
    ]
    return {
        "sandbox": {
            "token_ttl": 3600,
            "sender": {"timeout": 2, "max_retries": 0, "concurrency": 1, "circuit_threshold": 30},
        },
        "clients": [CLIENT],
        "customers": customers,
        "orders": orders,
        "webhooks": [
            {
                "id": "HookPlace1",
                "topic": "orders.place",
                "callback_url": callback_url,
                "include_resources": INCLUDES,
                "shared_secret": SHARED_SECRET,
            }
        ],
        "markets": [{"code": "eu", "name": "Europe"}],
    }


def test_open_circuit_is_reset_once_intake_heals_and_the_gap_is_backfilled(tmp_path):
    sb_port, web_port = free_port(), free_port()
    sb_url, web_url = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{web_port}"
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps(scenario(web_url + "/webhooks/commercelayer")))
    db = tmp_path / "svc.db"
    env = {
        "CL_WEBHOOK_SECRETS": f"sandbox:{SHARED_SECRET}",
        "CL_CLIENT_ID": CLIENT["client_id"],
        "CL_CLIENT_SECRET": CLIENT["client_secret"],
        "CL_SCOPE": CLIENT["scope"],
        "CL_API_BASE": sb_url + "/api",
        "CL_AUTH_URL": sb_url + "/oauth/token",
        "WEBHOOK_APP_MODE": "enforce",
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{db}",
        "WEBHOOK_APP_POLL_INTERVAL": "0.05",
        "WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL": "1",
        "WEBHOOK_APP_CIRCUIT_AUTO_RESET": "on",
        "WEBHOOK_APP_CIRCUIT_HEALTH_URL": web_url + "/readyz",
        "WEBHOOK_APP_CIRCUIT_BACKFILL_MARGIN": "5",
        "WEBHOOK_APP_CIRCUIT_WARN_FAILURES": "5",
    }
    procs = []

    def control(method, path, body=None):
        r = requests.request(
            method, sb_url + "/_sandbox" + path, json={} if body is None and method != "GET" else body, timeout=60
        )
        assert r.status_code < 300, r.text
        return r.json()

    def hook():
        return next(w for w in control("GET", "/state")["webhooks"] if w["id"] == "HookPlace1")

    def patches():
        reqs = control("GET", "/requests?route=orders.patch&method=PATCH")["requests"]
        out: dict[str, int] = {}
        for r in reqs:
            if r["status"] == 200:
                oid = r["path"].rsplit("/", 1)[-1]
                out[oid] = out.get(oid, 0) + 1
        return out

    try:
        sandbox = Service(["sandbox", "--port", str(sb_port), "--seed", str(scenario_file)], {}, tmp_path / "sb.log")
        procs.append(sandbox)
        wait_http(sb_url + "/_sandbox/health", proc=sandbox.proc)
        web = Service(["web", "--bind", f"127.0.0.1:{web_port}", "--workers", "1"], env, tmp_path / "web1.log")
        procs.append(web)
        wait_http(web_url + "/readyz", proc=web.proc)
        worker = Service(["worker"], env, tmp_path / "worker.log")
        procs.append(worker)

        # Before the outage: one order arrives and is flagged the ordinary way.
        control("POST", "/events", {"topic": "orders.place", "order_ids": [BEFORE], "transition": True})
        wait_until(lambda: patches().get(BEFORE) == 1, timeout=30, what="the first order flagged")

        # The outage: the intake is down; every delivery fails until the circuit opens.
        web.stop()
        control("POST", "/events", {"topic": "orders.place", "order_ids": MISSED, "transition": True})
        control("POST", "/events", {"topic": "orders.place", "order_ids": MISSED * 4})
        assert control("POST", "/sender/drain", {"timeout": 60})["drained"]
        assert hook()["circuit_state"] == "open" and hook()["circuit_failure_count"] == 30
        control("POST", "/events", {"topic": "orders.place", "order_ids": [LATE], "transition": True})
        assert control("POST", "/sender/drain", {"timeout": 30})["drained"]
        stats = control("GET", "/stats")["sender"]
        assert stats["circuits_opened"] == 1 and stats["skipped_circuit_open"] >= 1

        # The guard sees it and warns, but leaves the circuit open while our intake is unhealthy.
        wait_until(
            lambda: "circuit left open" in worker.output(), timeout=15, what="the guard noticing an unhealthy intake"
        )
        assert hook()["circuit_state"] == "open"
        assert "is rising" in worker.output() or "is open" in worker.output()

        # The intake heals: the guard resets the circuit and backfills the gap.
        web = Service(["web", "--bind", f"127.0.0.1:{web_port}", "--workers", "1"], env, tmp_path / "web2.log")
        procs.append(web)
        wait_http(web_url + "/readyz", proc=web.proc)
        wait_until(lambda: hook()["circuit_state"] == "closed", timeout=20, what="the circuit reset")
        expected = {BEFORE, *MISSED, LATE}
        wait_until(lambda: set(patches()) == expected, timeout=60, interval=0.2, what="every missed order flagged")
        store = SQLiteStore(str(db))
        try:

            def settled():
                q = store.queue_stats(now=time.time())
                return q.pending == 0 and q.running == 0

            wait_until(settled, timeout=30, interval=0.2, what="the queue drained")
            time.sleep(2.5)  # two more checks: nothing is reset or backfilled twice
            resets = store.list_operations(kind="circuit_reset")
            backfills = store.list_operations(kind="backfill")
        finally:
            store.close()
        assert patches() == {oid: 1 for oid in expected}  # exactly one PATCH per order
        wallet = control("GET", "/stats")["wallet"]
        assert wallet.get("duplicates", 0) == 0 and wallet.get("save_flags") == len(expected)
        assert [r.subject for r in resets] == ["HookPlace1"] and resets[0].detail["failures"] == 30
        assert len(backfills) == 1
        assert set(backfills[0].detail["orders"].split(",")) == {*MISSED, LATE}
        assert hook()["circuit_failure_count"] == 0

        # After the reset Commerce Layer calls again.
        before = len(control("GET", "/event_callbacks?webhook_id=HookPlace1")["event_callbacks"])
        control("POST", "/events", {"topic": "orders.place", "order_ids": [BEFORE]})
        assert control("POST", "/sender/drain", {"timeout": 30})["drained"]
        callbacks = control("GET", "/event_callbacks?webhook_id=HookPlace1")["event_callbacks"]
        assert len(callbacks) == before + 1 and callbacks[-1]["succeeded"]
    finally:
        for p in reversed(procs):
            p.stop()
