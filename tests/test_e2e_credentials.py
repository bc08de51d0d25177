"""End to end: refused Commerce Layer credentials hold the work; fixed, it runs with no requeue.

The real `serve` (front, gunicorn, worker) and the sandbox, both as processes. The sandbox's token
endpoint refuses a wrong secret as Commerce Layer does (401 `INVALID_CLIENT`); its clients can be
rotated (a scenario merge with another secret) and rotated back, with `/_sandbox/tokens/expire` to
end the tokens already issued.
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.store import DeliveryFilter
from webhook_app.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

SHARED_SECRET = "e2e-credentials-hook-secret-0123"
CLIENT = {"client_id": "e2e-cred-client", "client_secret": "e2e-cred-right-secret-abcdef", "scope": "market:code:eu"}
WRONG_SECRET = "e2e-cred-wrong-secret-abcdef"
ROTATED_SECRET = "e2e-cred-rotated-secret-abcdef"
INCLUDES = ["customer", "payment_source", "market", "line_items", "available_customer_payment_sources"]
ORDERS = [f"OrdCred{n:03d}" for n in range(4)]
REFUSED = "Commerce Layer refused the credentials"


def scenario(callback_url: str) -> dict:
    return {
        "clients": [CLIENT],
        "markets": [{"code": "eu", "name": "Europe"}],
        "customers": [{"email": "reg@example.com", "has_password": True}],
        "orders": [
            # a card of its own each: one card is one wallet entry, however many orders pay with it
            {
                "id": oid,
                "customer": "reg@example.com",
                "payment_source": {"type": "stripe_payments", "card_last4": f"{4240 + n}"},
            }
            for n, oid in enumerate([*ORDERS, "OrdCredLate"])
        ],
        "webhooks": [
            {
                "id": "HookCredAa",
                "topic": "orders.place",
                "callback_url": callback_url,
                "include_resources": INCLUDES,
                "shared_secret": SHARED_SECRET,
            }
        ],
    }


@pytest.fixture
def stack(tmp_path):
    sb_port, svc_port = free_port(), free_port()
    sb_url, svc_url = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{svc_port}"
    seed = tmp_path / "scenario.json"
    seed.write_text(json.dumps(scenario(svc_url + "/webhooks/commercelayer")))
    sandbox = Service(["sandbox", "--port", str(sb_port), "--seed", str(seed)], {}, tmp_path / "sandbox.log")
    wait_http(sb_url + "/_sandbox/health", proc=sandbox.proc)
    running: list[Service] = []

    class Stack:
        db = tmp_path / "svc.db"
        service_url = svc_url

        def serve(self, secret: str, name: str) -> Service:
            env = {
                "CL_WEBHOOK_SECRETS": f"sandbox:{SHARED_SECRET}",
                "CL_CLIENT_ID": CLIENT["client_id"],
                "CL_CLIENT_SECRET": secret,
                "CL_SCOPE": CLIENT["scope"],
                "CL_API_BASE": sb_url + "/api",
                "CL_AUTH_URL": sb_url + "/oauth/token",
                "WEBHOOK_APP_MODE": "enforce",
                "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{self.db}",
                "WEBHOOK_APP_POLL_INTERVAL": "0.05",
            }
            svc = Service(
                ["serve", "--bind", f"127.0.0.1:{svc_port}"],
                {**env, "WEBHOOK_APP_OPERATOR_BIND": "public"},
                tmp_path / f"{name}.log",
            )
            running.append(svc)
            wait_http(svc_url + "/healthz", proc=svc.proc)
            return svc

        def control(self, method: str, path: str, body=None):
            r = requests.request(
                method, sb_url + "/_sandbox" + path, json={} if body is None and method != "GET" else body, timeout=60
            )
            assert r.status_code < 300, r.text
            return r.json()

        def place(self, order_ids: list[str]) -> None:
            self.control("POST", "/events", {"topic": "orders.place", "order_ids": order_ids})
            assert self.control("POST", "/sender/drain", {"timeout": 30})["drained"]

        def jobs(self) -> dict[str, dict]:
            """Each order's job, as the service stored it."""
            store = SQLiteStore(str(self.db))
            try:
                return {d.order_id: d.job for d in store.list_deliveries(DeliveryFilter(limit=1000)) if d.job}
            finally:
                store.close()

    yield Stack()
    for svc in reversed(running):
        svc.stop()
    sandbox.stop()


def log_lines(svc: Service) -> list[dict]:
    out = []
    for line in svc.output().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def refused_lines(svc: Service) -> list[dict]:
    return [x for x in log_lines(svc) if x.get("level") == "error" and REFUSED in str(x.get("event"))]


def readyz(url: str) -> requests.Response:
    return requests.get(url + "/readyz", timeout=10)


def test_a_wrong_secret_holds_the_orders_and_the_right_one_runs_them_without_a_requeue(stack):
    wrong = stack.serve(WRONG_SECRET, "wrong")
    wait_until(lambda: refused_lines(wrong), timeout=20, what="the start check's line")
    stack.place(ORDERS)
    wait_until(lambda: len(stack.jobs()) == len(ORDERS), timeout=20, what="every delivery stored")
    time.sleep(4)  # the worker re-checks (1, 2, 4 s apart...): still refused, nothing attempted
    jobs = stack.jobs()
    assert {j["state"] for j in jobs.values()} == {"pending"} and {j["attempts"] for j in jobs.values()} == {0}
    r = readyz(stack.service_url)
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    why = r.json()["checks"]["commercelayer_credentials"]
    assert (
        why.startswith(f"{REFUSED} (HTTP 401 from the token endpoint")
        and "check CL_CLIENT_ID and CL_CLIENT_SECRET" in why
    )
    assert "jobs are held" in why
    [line] = refused_lines(wrong)  # one line, not one per job or per re-check
    assert "check CL_CLIENT_ID and CL_CLIENT_SECRET" in line["event"]
    assert "Client authentication failed" in line["event"]  # Commerce Layer's own words
    assert wrong.stop() == 0
    assert WRONG_SECRET not in wrong.output()

    right = stack.serve(CLIENT["client_secret"], "right")

    def all_done():
        return {j["state"] for j in stack.jobs().values()} == {"done"}

    wait_until(all_done, timeout=30, interval=0.2, what="the held jobs done with no requeue")
    assert {j["attempts"] for j in stack.jobs().values()} == {1}
    assert any(x.get("event") == "Commerce Layer credentials accepted" for x in log_lines(right))
    assert refused_lines(right) == []
    r = readyz(stack.service_url)
    assert r.status_code == 200 and r.json()["checks"]["commercelayer_credentials"].startswith("accepted")
    wallet = stack.control("GET", "/state")["customer_payment_sources"]
    assert sorted(w["origin_order_id"] for w in wallet) == sorted(ORDERS)


def test_credentials_revoked_then_accepted_again_hold_then_resume_by_themselves(stack):
    svc = stack.serve(CLIENT["client_secret"], "serve")
    wait_until(
        lambda: any(x.get("event") == "Commerce Layer credentials accepted" for x in log_lines(svc)),
        timeout=20,
        what="the start check's line",
    )
    # The organization rotates the client's secret: the service's is refused from the next token on.
    stack.control("POST", "/scenario?mode=merge", {"clients": [{**CLIENT, "client_secret": ROTATED_SECRET}]})
    stack.control("POST", "/tokens/expire")
    stack.place(["OrdCredLate"])
    wait_until(lambda: refused_lines(svc), timeout=20, what="the refusal's line")
    wait_until(lambda: readyz(stack.service_url).status_code == 503, timeout=10, what="/readyz 503")
    time.sleep(2)
    job = stack.jobs()["OrdCredLate"]
    assert job["state"] == "pending" and job["attempts"] == 0
    # ... and rotates it back: the same secret is accepted again at the next re-check.
    stack.control("POST", "/scenario?mode=merge", {"clients": [CLIENT]})
    wait_until(lambda: stack.jobs()["OrdCredLate"]["state"] == "done", timeout=40, interval=0.2, what="job done")
    assert stack.jobs()["OrdCredLate"]["attempts"] == 1
    assert len(refused_lines(svc)) == 1
    assert any("accepted the credentials again" in str(x.get("event")) for x in log_lines(svc))
    assert readyz(stack.service_url).status_code == 200
