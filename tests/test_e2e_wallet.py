"""End to end against the sandbox, answering as Commerce Layer documents: the wallet guarantees hold.

The real service (`serve`) and the sandbox as processes. The sandbox puts relationship linkage only
on included paths, and it accepts a second save of the same payment source (a second wallet entry),
as Commerce Layer does; so a receiver that cannot tell a save has landed saves twice.

- 8 orders whose first save is applied but answered only after the client's read timeout: each
  must end with exactly one wallet entry (the retry looks before writing again).
- 4 orders whose payment source is already in the wallet when the event arrives: no PATCH at all.

Run twice: with webhooks registered as `webhooks register` does (include_resources with the
`available_customer_payment_sources.payment_source` path), and with an older registration whose
bodies carry the wallet without that path (entries with links and tokens only).
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.config import bundled_policy_path
from webhook_app.policy import load_policy
from webhook_app.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

SHARED_SECRET = "e2e-wallet-shared-secret-0123456789"
CLIENT = {"client_id": "e2e-wallet-client", "client_secret": "e2e-wallet-client-secret-abcdef"}
LATE = [f"OrdLate{n:03d}" for n in range(8)]
SAVED = [f"OrdSaved{n:02d}" for n in range(4)]
READ_TIMEOUT = 1.0


def scenario(callback_url: str, include_resources: list[str]) -> dict:
    customers = [{"email": f"c{n}@example.com", "has_password": True} for n in range(4)]
    orders = [
        {
            "id": oid,
            "customer": f"c{n % 4}@example.com",
            "payment_source": {"type": "stripe_payments", "card_last4": f"{4100 + n}"},
        }
        for n, oid in enumerate(LATE + SAVED)
    ]
    wallet = [{"customer": f"c{(len(LATE) + n) % 4}@example.com", "order": oid} for n, oid in enumerate(SAVED)]
    webhooks = [
        {
            "id": "HookPlace1",
            "topic": "orders.place",
            "callback_url": callback_url,
            "include_resources": include_resources,
            "shared_secret": SHARED_SECRET,
        }
    ]
    return {
        "sandbox": {
            "token_ttl": 3600,
            "api_limits": ["1000/60"],
            "endpoint_limits": ["500/10"],
            "sender": {"timeout": 5, "max_retries": 3, "backoff_base": 0.2, "concurrency": 4},
        },
        "clients": [CLIENT],
        "customers": customers,
        "orders": orders,
        "customer_payment_sources": wallet,
        "webhooks": webhooks,
        "markets": [{"code": "eu", "name": "Europe"}],
    }


REGISTERED = load_policy(bundled_policy_path()).required_includes()
OLDER = [i for i in REGISTERED if "." not in i]


@pytest.mark.parametrize("includes", [REGISTERED, OLDER], ids=["as-registered", "without-dotted-path"])
def test_each_order_ends_with_one_wallet_entry_and_saved_ones_get_no_patch(tmp_path, includes):
    assert "available_customer_payment_sources.payment_source" in REGISTERED
    assert "available_customer_payment_sources" in OLDER
    sb_port, svc_port = free_port(), free_port()
    sb_url, svc_url = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{svc_port}"
    (tmp_path / "scenario.json").write_text(json.dumps(scenario(svc_url + "/webhooks/commercelayer", includes)))
    procs = []
    try:
        sandbox = Service(
            ["sandbox", "--port", str(sb_port), "--seed", str(tmp_path / "scenario.json")], {}, tmp_path / "sandbox.log"
        )
        procs.append(sandbox)
        wait_http(sb_url + "/_sandbox/health", proc=sandbox.proc)
        env = {
            "CL_WEBHOOK_SECRETS": f"sandbox:{SHARED_SECRET}",
            "CL_CLIENT_ID": CLIENT["client_id"],
            "CL_CLIENT_SECRET": CLIENT["client_secret"],
            "CL_API_BASE": sb_url + "/api",
            "CL_AUTH_URL": sb_url + "/oauth/token",
            "WEBHOOK_APP_MODE": "enforce",
            "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'svc.db'}",
            "WEBHOOK_APP_POLL_INTERVAL": "0.02",
            "WEBHOOK_APP_RETRY_BASE_SECONDS": "0.2",
            "WEBHOOK_APP_RETRY_MAX_SECONDS": "2",
            "CL_READ_TIMEOUT": str(READ_TIMEOUT),
            "WEBHOOK_APP_LEASE_SECONDS": "30",
        }
        svc = Service(["serve", "--bind", f"127.0.0.1:{svc_port}"], env, tmp_path / "service.log")
        procs.append(svc)
        wait_http(svc_url + "/healthz", proc=svc.proc)

        def control(method, path, body=None):
            r = requests.request(
                method, sb_url + "/_sandbox" + path, json={} if body is None and method != "GET" else body, timeout=60
            )
            assert r.status_code < 300, r.text
            return r.json()

        before = control("GET", "/state")
        source_of = {o["id"]: o["payment_source"]["id"] for o in before["orders"]}
        assert sorted(w["payment_source"]["id"] for w in before["customer_payment_sources"]) == sorted(
            source_of[o] for o in SAVED
        )
        # The first PATCH of each late order is applied at once and answered after the read timeout.
        control(
            "PUT",
            "/faults",
            {
                "seed": 3,
                "rules": [
                    {
                        "route": "orders.patch",
                        # applied at once, the answer held back past the client's read timeout
                        "late_answer_share": 1.0,
                        "late_answer_seconds": READ_TIMEOUT + 1.0,
                        "requests": len(LATE),
                    }
                ],
            },
        )
        control("POST", "/events", {"topic": "orders.place", "order_ids": LATE + SAVED})
        assert control("POST", "/sender/drain", {"timeout": 60})["drained"]

        store = SQLiteStore(str(tmp_path / "svc.db"))
        try:

            def settled():
                q = store.queue_stats(now=time.time())
                return q.pending == 0 and q.running == 0 and q.done + q.dead >= len(LATE + SAVED)

            wait_until(settled, timeout=90, interval=0.2, what="service queue drained")
            dead = store.queue_stats(now=time.time()).dead
        finally:
            store.close()
        final = control("GET", "/state")
        patches = control("GET", "/requests?route=orders.patch")["requests"]
        late = [p for p in patches if "late_answer" in (p.get("faults") or [])]
    finally:
        for p in reversed(procs):
            p.stop()

    entries = [w["payment_source"]["id"] for w in final["customer_payment_sources"]]
    assert {o: entries.count(source_of[o]) for o in LATE + SAVED} == {o: 1 for o in LATE + SAVED}
    patched = {p["path"].rsplit("/", 1)[-1] for p in patches}
    assert patched.isdisjoint(SAVED)  # already in the wallet: never PATCHed
    assert patched == set(LATE)
    # the fault really happened: each late order's one PATCH was answered late (after the timeout)
    assert sorted(p["path"].rsplit("/", 1)[-1] for p in late) == sorted(LATE)
    assert sum(1 for p in patches if p["path"].rsplit("/", 1)[-1] in LATE) == len(LATE)
    assert dead == 0
