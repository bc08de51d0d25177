"""Scale-out proof: nginx over two web instances, two workers, one PostgreSQL, the sandbox.

2,000 signed deliveries for 500 orders go through nginx, 20% of them repeats, half of those sent
at the same moment so that they land on different instances; one worker is killed with SIGKILL
mid-run and restarted. Afterwards every acknowledged delivery is stored once, every order the
policy selects has exactly one PATCH at the sandbox, no job is stuck, and the sandbox saw no 429
(the rate limit is shared by both workers through PostgreSQL).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
import requests
from commercelayer_sandbox import Sandbox
from support import pg_schema_url, require_postgres
from support.procs import Service, free_port, private_nginx_conf, wait_http, wait_until

from webhook_app.config import bundled_policy_path
from webhook_app.events import Event
from webhook_app.policy import SAVE, load_policy
from webhook_app.signing import sign
from webhook_app.store.postgres import PostgresStore

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SECRET = "cluster-shared-secret-0123456789"
CLIENT = {"client_id": "cluster-client", "client_secret": "cluster-client-secret-xyz", "scope": "market:all"}
INCLUDES = ["customer", "payment_source", "market", "line_items", "available_customer_payment_sources"]
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"

SCENARIO = {
    "sandbox": {"token_ttl": 7200, "api_limits": ["1200/60"], "endpoint_limits": ["100/5"], "request_log_size": 50000},
    "clients": [CLIENT],
    "generate": {"orders": 500, "guest_share": 0.2, "seed": 42},
    # the webhook only gives the in-process renderer the include list; the test sends the bodies
    "webhooks": [
        {
            "id": "HookPlaceC",
            "topic": "orders.place",
            "callback_url": "http://127.0.0.1:9/x",
            "include_resources": INCLUDES,
            "shared_secret": SECRET,
        }
    ],
}


def nginx_conf(prefix: Path, listen: int, upstreams: list[int]) -> Path:
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=0;" for p in upstreams)
    return private_nginx_conf(
        prefix,
        f"""  upstream webhook_app {{
{servers}
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{listen};
    client_max_body_size 1m;
    location / {{
      proxy_pass http://webhook_app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_connect_timeout 1s;
      proxy_read_timeout 4s;
      add_header X-Upstream $upstream_addr always;
    }}
  }}
""",
        connections=1024,
    )


def test_two_instances_two_workers_one_database(tmp_path):
    require_postgres()
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs nginx (apt-get install nginx)")
        pytest.skip("nginx is not installed (Debian package nginx)")
    with pg_schema_url() as db_url:
        _run(tmp_path, db_url, nginx)


class _Env(dict):
    """The services' environment: it holds secrets, so a failure's traceback shows no values."""

    def __repr__(self) -> str:
        return f"<environment of {len(self)} variables>"


def _run(tmp_path: Path, db_url: str, nginx: str) -> None:
    procs: list[Service] = []
    sb_port, web_ports, lb_port = free_port(), [free_port(), free_port()], free_port()
    sb_url, lb_url = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{lb_port}"
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps(SCENARIO))
    env = _Env(
        {
            "CL_WEBHOOK_SECRETS": f"cl:{SECRET}",
            "CL_CLIENT_ID": CLIENT["client_id"],
            "CL_CLIENT_SECRET": CLIENT["client_secret"],
            "CL_API_BASE": sb_url + "/api",
            "CL_AUTH_URL": sb_url + "/oauth/token",
            "WEBHOOK_APP_MODE": "enforce",
            "WEBHOOK_APP_DATABASE_URL": db_url,
            "WEBHOOK_APP_POLL_INTERVAL": "0.05",
            "WEBHOOK_APP_LEASE_SECONDS": "5",
            "CL_CONNECT_TIMEOUT": "1",
            "WEBHOOK_APP_RETRY_BASE_SECONDS": "0.2",
            "WEBHOOK_APP_RETRY_MAX_SECONDS": "2",
            "CL_READ_TIMEOUT": "2",
            # below the sandbox's limits: only a limit shared by both workers stays under them
            "CL_RATE_LIMITS": "1100/60,90/5",
            "WEBHOOK_APP_FORWARDED_HOPS": "1",
            "WEBHOOK_APP_LOG_LEVEL": "WARNING",
        }
    )
    try:
        sandbox = Service(
            ["sandbox", "--port", str(sb_port), "--seed", str(scenario_file)], {}, tmp_path / "sandbox.log"
        )
        procs.append(sandbox)
        wait_http(sb_url + "/_sandbox/health", proc=sandbox.proc)
        up = subprocess.run(
            [sys.executable, "-m", "webhook_app", "db", "upgrade"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert up.returncode == 0, up.stderr
        for n, port in enumerate(web_ports):
            web = Service(["web", "--bind", f"127.0.0.1:{port}", "--workers", "2"], env, tmp_path / f"web{n}.log")
            procs.append(web)
            wait_http(f"http://127.0.0.1:{port}/readyz", proc=web.proc)
        workers = [Service(["worker"], env, tmp_path / f"worker{n}.log") for n in range(2)]
        procs += workers
        lb_prefix = tmp_path / "nginx"
        lb_prefix.mkdir()
        conf = nginx_conf(lb_prefix, lb_port, web_ports)
        lb = subprocess.Popen(
            [nginx, "-p", str(lb_prefix), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        try:
            wait_http(lb_url + "/healthz", proc=lb)
            _load(tmp_path, procs, workers, env, sb_url, lb_url, db_url, web_ports)
        finally:
            lb.terminate()
            lb.wait(timeout=10)
    finally:
        failing = sys.exc_info()[0] is not None
        for p in reversed(procs):
            p.stop()
        if failing:  # show what the processes said, to make a failure diagnosable
            for p in procs:
                print(f"--- {p.log_path.name} ---\n{p.output()[-3000:]}")


def _bodies() -> tuple[dict[str, dict], list[tuple[str, str, bytes]]]:
    """Render the 1,600 distinct webhook bodies exactly as the sandbox's sender would."""
    sb = Sandbox()
    sb.load_scenario(SCENARIO)
    hook = next(iter(sb.state.webhooks.values()))
    orders = sorted(sb.state.orders.values(), key=lambda o: o.id)
    assert len(orders) == 500
    distinct = []
    for n, order in enumerate(orders):
        topics = ["orders.place", "orders.approve", "orders.start_fulfilling"] + (["orders.pay"] if n < 100 else [])
        for topic in topics:
            distinct.append((order.id, topic, sb.webhook_body(order, hook, topic)))
    return {o.id: o for o in orders}, distinct


def _load(tmp_path, procs, workers, env, sb_url, lb_url, db_url, web_ports):
    orders, distinct = _bodies()
    state = requests.get(sb_url + "/_sandbox/state", timeout=30).json()
    assert sorted(o["id"] for o in state["orders"]) == sorted(orders)  # same generated ids
    rng = random.Random(2026)
    repeats = rng.sample(range(len(distinct)), 400)
    together, later = repeats[:200], repeats[200:]
    tasks: list[list[int]] = [[i, i] if i in set(together) else [i] for i in range(len(distinct))]
    tasks += [[i] for i in later]
    rng.shuffle(tasks)
    assert sum(len(t) for t in tasks) == 2000

    results: list[dict] = []
    lock = threading.Lock()
    local = threading.local()

    def post(i: int) -> None:
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        _, topic, body = distinct[i]
        r = s.post(
            lb_url + "/webhooks/commercelayer",
            data=body,
            timeout=10,
            headers={
                "Content-Type": "application/json",
                "X-CommerceLayer-Topic": topic,
                "X-CommerceLayer-Signature": sign(body, secret=SECRET),
            },
        )
        with lock:
            results.append(
                {
                    "i": i,
                    "status": r.status_code,
                    "upstream": r.headers.get("X-Upstream"),
                    "json": r.json() if r.headers.get("Content-Type", "").startswith("application/json") else None,
                }
            )

    def run_task(task: list[int]) -> None:
        if len(task) == 1:
            post(task[0])
            return
        barrier = threading.Barrier(2)

        def one():
            barrier.wait()
            post(task[0])

        pair = [threading.Thread(target=one) for _ in range(2)]
        for t in pair:
            t.start()
        for t in pair:
            t.join()

    killed = threading.Event()

    def killer():
        # SIGKILL a worker while PATCHes are under way, then start it again
        def patches():
            return (
                requests.get(sb_url + "/_sandbox/stats", timeout=10)
                .json()["by_route"]
                .get("orders.patch", {})
                .get("200", 0)
            )

        wait_until(lambda: patches() >= 40, timeout=120, interval=0.1, what="40 PATCHes")
        workers[0].kill()
        killed.set()
        time.sleep(1.0)
        procs.append(Service(["worker"], env, tmp_path / "worker0-restarted.log"))

    k = threading.Thread(target=killer)
    k.start()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(run_task, tasks))
    send_seconds = time.monotonic() - started
    k.join(timeout=180)
    assert killed.is_set()

    store = PostgresStore(db_url)
    try:

        def settled():
            q = store.queue_stats(now=time.time())
            return q.pending == 0 and q.running == 0

        wait_until(settled, timeout=240, interval=0.5, what="queue drained")
        drained_seconds = time.monotonic() - started
        q = store.queue_stats(now=time.time())
        with store._tx(write=False) as c:  # counts straight from the database
            stored = c.one("SELECT COUNT(*) AS n, COUNT(DISTINCT identity) AS d FROM deliveries")
            jobs = c.one("SELECT COUNT(*) AS n FROM jobs")
            applied = c.all("SELECT order_id, COUNT(*) AS n FROM decisions WHERE outcome = 'applied' GROUP BY order_id")
    finally:
        store.close()

    statuses = Counter(r["status"] for r in results)
    acked = [r for r in results if 200 <= r["status"] < 300]
    assert len(results) == 2000 and len(acked) == 2000, statuses
    by_item: dict[int, set[int]] = {}
    for r in acked:
        by_item.setdefault(r["i"], set()).add(r["json"]["delivery_id"])
    assert all(len(ids) == 1 for ids in by_item.values())  # a repeat maps to the stored delivery
    assert stored["n"] == stored["d"] == len(distinct) == len(by_item)  # each acknowledged delivery stored once
    accepted = Counter(r["json"]["status"] for r in acked)
    assert accepted["duplicate"] == 400
    split_pairs = 0
    for i in together:
        ups = {r["upstream"] for r in results if r["i"] == i}
        split_pairs += len(ups) == 2
    assert split_pairs > 0  # some simultaneous repeats really reached different instances

    sb_requests = requests.get(sb_url + "/_sandbox/requests", params={"route": "orders.patch"}, timeout=60).json()[
        "requests"
    ]
    patched = Counter(r["path"].rsplit("/", 1)[1] for r in sb_requests if r["status"] == 200)
    # what the bundled policy (the service's) calls for, decided on the very bodies that were sent
    policy = load_policy(bundled_policy_path())
    selected = {
        order_id for order_id, topic, body in distinct if policy.decide(Event.from_body(topic, body)).action == SAVE
    }
    assert 0 < len(selected) < len(orders)
    assert set(patched) == selected and all(n == 1 for n in patched.values()), [o for o, n in patched.items() if n != 1]
    assert {r["order_id"] for r in applied} == selected and all(r["n"] == 1 for r in applied)
    assert q.dead == 0 and q.pending == 0 and q.running == 0 and jobs["n"] == len(distinct)
    stats = requests.get(sb_url + "/_sandbox/stats", timeout=30).json()
    assert stats.get("rate_limited", {}).get("total", 0) == 0, stats.get("rate_limited")
    assert stats.get("wallet", {}).get("duplicates", 0) == 0
    # how close the two workers together came to the sandbox's 100 per 5 s (the limit was binding)
    api = requests.get(sb_url + "/_sandbox/requests", timeout=60).json()["requests"]
    times = sorted(
        datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp() for r in api if r["route"] != "token"
    )
    busiest = max(sum(1 for t in times[i:] if t < start + 5) for i, start in enumerate(times))

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster-proof.json").write_text(
        json.dumps(
            {
                "deliveries_sent": len(results),
                "acknowledged_2xx": len(acked),
                "answers": dict(statuses),
                "distinct_deliveries": len(distinct),
                "stored_deliveries": stored["n"],
                "duplicates_answered": accepted["duplicate"],
                "simultaneous_repeat_pairs": len(together),
                "pairs_split_across_instances": split_pairs,
                "orders": len(orders),
                "orders_selected_by_policy": len(selected),
                "orders_patched": len(patched),
                "patches_per_selected_order": sorted(set(patched.values())),
                "dead_jobs": q.dead,
                "stuck_jobs": q.pending + q.running,
                "sandbox_429": stats.get("rate_limited", {}).get("total", 0),
                "workers_killed": 1,
                "busiest_5s_api_calls": busiest,
                "sandbox_limit_per_5s": 100,
                "client_limit_per_5s": 90,
                "send_seconds": round(send_seconds, 1),
                "drain_seconds": round(drained_seconds, 1),
            },
            indent=1,
        )
    )
