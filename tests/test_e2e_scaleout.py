"""The guarantees, scaled out: several `web` and `worker` processes on one database and the sandbox.

Each test runs on PostgreSQL and on SQLite (several workers on one file). Every event the sandbox
sends goes to three webhooks whose callbacks are spread over two `web` instances, so each delivery
arrives three times at once at different instances.

- One card, one entry: two customers paying every order with the same card, a third with two
  cards; a third of the save PATCHes are applied but answered after the read timeout, and a worker
  is SIGKILLed mid-run. Every customer ends with one wallet entry per card.
- One reuse per order: each order's first `use_wallet_source` PATCH is applied but answered late;
  meanwhile the customer's wallet gains a newer entry and the event comes again. No order gets
  two applied use PATCHes.
- One backfill per gap: two `reconcile` runs at once, while workers act on what the first queued,
  queue each missed order once.
- No requeue lost to a prune: dead letters past a two-second retention are requeued through the
  admin API of both instances while prunes run beside them; every requeue answered 202 is
  attempted (its order PATCHed). Before the fix PostgreSQL lost some; SQLite's writers are
  serialized and never did.

Figures: `pytest tests/test_e2e_scaleout.py -s` prints them (entries per customer and card,
applied PATCHes per order, backfill jobs per missed order, requeues answered and attempted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from support import pg_schema_url, require_postgres
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.store import open_store

pytestmark = pytest.mark.e2e

SECRET = "scaleout-shared-secret-0123456789"
CLIENT = {"client_id": "scaleout-client", "client_secret": "scaleout-client-secret-abcdef"}
INCLUDES = [
    "customer",
    "payment_source",
    "market",
    "line_items",
    "available_customer_payment_sources",
    "available_customer_payment_sources.payment_source",
]
READ_TIMEOUT = 1.0


class _Env(dict):
    """The services' environment: it holds secrets, so a failure's traceback shows no values."""

    def __repr__(self) -> str:
        return f"<environment of {len(self)} variables>"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'svc.db'}"
        return
    require_postgres()
    with pg_schema_url() as url:
        yield url


class Cluster:
    """The sandbox, `web` instances and workers as processes, on one database."""

    def __init__(self, tmp_path: Path, db_url: str, scenario: dict, **env: str) -> None:
        self.tmp = tmp_path
        self.db_url = db_url
        self.procs: list[Service] = []
        self.workers: list[Service] = []
        self.sb_port = free_port()
        self.sb_url = f"http://127.0.0.1:{self.sb_port}"
        self.web_urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
        hooks = [
            {
                "id": f"Hook{n}",
                "topic": topic,
                "callback_url": self.web_urls[n % 2] + "/webhooks/commercelayer",
                "include_resources": INCLUDES,
                "shared_secret": SECRET,
            }
            for topic in scenario.pop("topics", ["orders.place"])
            for n in range(3)
        ]
        scenario = {
            "sandbox": {
                "token_ttl": 3600,
                "api_limits": ["5000/60"],
                "endpoint_limits": ["2000/10"],
                "request_log_size": 50000,
                "sender": {"timeout": 5, "max_retries": 3, "backoff_base": 0.2, "concurrency": 6},
            },
            "clients": [CLIENT],
            "webhooks": hooks,
            "markets": [{"code": "eu", "name": "Europe"}],
            **scenario,
        }
        (tmp_path / "scenario.json").write_text(json.dumps(scenario))
        self.env = _Env(
            {
                "CL_WEBHOOK_SECRETS": f"sandbox:{SECRET}",
                "CL_CLIENT_ID": CLIENT["client_id"],
                "CL_CLIENT_SECRET": CLIENT["client_secret"],
                "CL_API_BASE": self.sb_url + "/api",
                "CL_AUTH_URL": self.sb_url + "/oauth/token",
                "WEBHOOK_APP_MODE": "enforce",
                "WEBHOOK_APP_DATABASE_URL": db_url,
                "WEBHOOK_APP_POLL_INTERVAL": "0.05",
                "WEBHOOK_APP_LEASE_SECONDS": "4",
                "CL_CONNECT_TIMEOUT": "1",
                "CL_READ_TIMEOUT": str(READ_TIMEOUT),
                "WEBHOOK_APP_RETRY_BASE_SECONDS": "0.2",
                "WEBHOOK_APP_RETRY_MAX_SECONDS": "2",
                "WEBHOOK_APP_LOG_LEVEL": "WARNING",
                "CL_RATE_LIMITS": "4000/60,1500/10",  # under the sandbox's limits, far above the load
                **env,
            }
        )

    def start(self, *, workers: int, web: bool = True) -> None:
        sandbox = Service(
            ["sandbox", "--port", str(self.sb_port), "--seed", str(self.tmp / "scenario.json")],
            {},
            self.tmp / "sandbox.log",
        )
        self.procs.append(sandbox)
        wait_http(self.sb_url + "/_sandbox/health", proc=sandbox.proc)
        self.cli("db", "upgrade")
        if web:
            for n, url in enumerate(self.web_urls):
                w = Service(
                    ["web", "--bind", url.removeprefix("http://"), "--workers", "1"], self.env, self.log(f"web{n}")
                )
                self.procs.append(w)
                wait_http(url + "/readyz", proc=w.proc)
        for _ in range(workers):
            self.start_worker()

    def log(self, name: str) -> Path:
        n = sum(1 for p in self.tmp.glob(f"{name}*.log"))
        return self.tmp / f"{name}{'-' + str(n) if n else ''}.log"

    def start_worker(self) -> Service:
        w = Service(["worker"], self.env, self.log(f"worker{len(self.workers)}"))
        self.procs.append(w)
        self.workers.append(w)
        # its loop is running (its first heartbeat is in the store) before anything is sent: a worker
        # still starting when the deliveries come in prunes, at its first tick, what a short
        # retention already allows. Workers share the heartbeat row: another's beat may hide this
        # one's until its next, HEARTBEAT_SECONDS later.
        beat = f":{w.proc.pid}:"
        wait_until(
            lambda: any(beat in (r["source"] or "") for r in self.rows("SELECT source FROM service_status")),
            timeout=60,
            interval=0.1,
            what="the worker's first heartbeat",
        )
        return w

    def cli(self, *args: str, background: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
        cmd = [sys.executable, "-m", "webhook_app", *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_"))}
        env.update(self.env)
        if background:
            return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    def control(self, method: str, path: str, body: dict | None = None) -> dict:
        r = requests.request(
            method, self.sb_url + "/_sandbox" + path, json={} if body is None and method != "GET" else body, timeout=60
        )
        assert r.status_code < 300, r.text
        return r.json() if r.content else {}

    def send(self, topic: str, order_ids: list[str]) -> None:
        self.control("POST", "/events", {"topic": topic, "order_ids": order_ids})
        assert self.control("POST", "/sender/drain", {"timeout": 60})["drained"]

    def patches(self) -> list[dict]:
        return self.control("GET", "/requests?route=orders.patch&method=PATCH")["requests"]

    def client(self) -> CommerceLayerClient:
        return CommerceLayerClient(
            api_base=self.sb_url + "/api",
            auth_url=self.sb_url + "/oauth/token",
            client_id=CLIENT["client_id"],
            client_secret=CLIENT["client_secret"],
        )

    def drained(self, *, timeout: float = 60) -> None:
        store = open_store(self.db_url)
        try:

            def settled() -> bool:
                q = store.queue_stats(now=time.time())
                return q.pending == 0 and q.running == 0

            wait_until(settled, timeout=timeout, interval=0.2, what="the queue drained")
        finally:
            store.close()

    def rows(self, sql: str) -> list[dict]:
        store = open_store(self.db_url)
        try:
            with store._tx(write=False) as c:  # counts straight from the database
                return [dict(r) for r in c.all(sql)]
        finally:
            store.close()

    def stop(self) -> None:
        failing = sys.exc_info()[0] is not None
        for p in reversed(self.procs):
            p.stop()
        if failing:  # what the processes said, to make a failure diagnosable
            for p in self.procs:
                print(f"--- {p.log_path.name} ---\n{p.output()[-3000:]}")


@contextmanager
def cluster(tmp_path: Path, db_url: str, scenario: dict, *, workers: int, web: bool = True, **env: str):
    c = Cluster(tmp_path, db_url, scenario, **env)
    try:
        c.start(workers=workers, web=web)
        yield c
    finally:
        c.stop()


def applied(request: dict) -> bool:
    """A PATCH Commerce Layer applied: answered 200, at once or after the client had given up."""
    return request["status"] == 200


# --- one card, one entry -------------------------------------------------------------------------
SAME_CARD = 12  # orders of each of the two one-card customers


def card_scenario() -> dict:
    customers = [
        {"email": e, "has_password": True} for e in ("alice@example.com", "bob@example.com", "carol@example.com")
    ]
    orders = []
    for who in ("alice", "bob"):
        orders += [
            {
                "id": f"Ord{who.title()}{n:02d}",
                "customer": f"{who}@example.com",
                "payment_source": {"type": "stripe_payments", "card_last4": "4242"},
            }
            for n in range(SAME_CARD)
        ]
    orders += [
        {
            "id": f"OrdCarol{n:02d}",
            "customer": "carol@example.com",
            "payment_source": {"type": "stripe_payments", "card_last4": "1111" if n % 2 else "2222"},
        }
        for n in range(4)
    ]
    return {"customers": customers, "orders": orders}


def test_every_customer_ends_with_one_entry_per_card(tmp_path, db_url):
    with cluster(tmp_path, db_url, card_scenario(), workers=3) as c:
        state = c.control("GET", "/state")
        orders = [o["id"] for o in state["orders"]]
        email = {cu["id"]: cu["email"] for cu in state["customers"]}
        # a third of the saves are applied but answered after the client's read timeout
        c.control(
            "PUT",
            "/faults",
            {
                "seed": 5,
                "rules": [
                    {
                        "route": "orders.patch",
                        "late_answer_share": 0.3,
                        "late_answer_seconds": READ_TIMEOUT + 0.5,
                    }
                ],
            },
        )
        c.send("orders.place", orders)
        # a worker killed mid-run, and started again
        wait_until(lambda: len(c.patches()) >= 2, timeout=30, interval=0.05, what="the first saves")
        c.workers[0].kill()
        c.start_worker()
        c.drained(timeout=120)
        final = c.control("GET", "/state")
        patches = c.patches()
        saves = c.rows("SELECT order_id, guard, outcome, wallet_entry_id FROM decisions")

    entries = Counter((email[w["customer_id"]], w["name"]) for w in final["customer_payment_sources"])
    print("\nwallet entries per customer and card:", dict(entries))
    print(
        "save PATCHes applied:",
        sum(applied(p) for p in patches),
        "late:",
        sum("late_answer" in p["faults"] for p in patches),
    )
    assert dict(entries) == {
        ("alice@example.com", "XXXX-XXXX-XXXX-4242"): 1,
        ("bob@example.com", "XXXX-XXXX-XXXX-4242"): 1,
        ("carol@example.com", "XXXX-XXXX-XXXX-1111"): 1,  # a customer with two cards: two entries
        ("carol@example.com", "XXXX-XXXX-XXXX-2222"): 1,
    }
    assert any("late_answer" in p["faults"] for p in patches)  # the fault really happened
    # every other order of a card was recorded with the entry the first one made
    entry_of = {(email[w["customer_id"]], w["name"][-4:]): w["id"] for w in final["customer_payment_sources"]}
    for who in ("Alice", "Bob"):
        mine = [s for s in saves if s["order_id"].startswith(f"Ord{who}")]
        assert {s["order_id"] for s in mine} == {f"Ord{who}{n:02d}" for n in range(SAME_CARD)}
        assert {s["wallet_entry_id"] for s in mine if s["outcome"] in ("applied", "guarded")} == {
            entry_of[(f"{who.lower()}@example.com", "4242")]
        }
        assert any(s["guard"] == "card_already_in_wallet" for s in mine)


# --- one reuse per order -------------------------------------------------------------------------
REUSERS = 6
REUSE_POLICY = """version = 1
[default]
action = "skip"
reason = "no rule matched"

[[rules]]
name = "reuse-wallet"
topics = ["orders.pending"]
action = "use_wallet_source"
strategy = "newest"
"""


def reuse_scenario() -> dict:
    customers = [{"email": f"u{n}@example.com", "has_password": True} for n in range(REUSERS)]
    orders = []
    for n in range(REUSERS):
        # paid earlier with the card the wallet already holds (W1) ...
        orders.append(
            {"id": f"OrdFirst{n}", "customer": f"u{n}@example.com", "payment_source": {"type": "stripe_payments"}}
        )
        # ... a later order with another card, whose save gives the wallet a newer entry (W2) ...
        orders.append(
            {
                "id": f"OrdOther{n}",
                "customer": f"u{n}@example.com",
                "payment_source": {"type": "stripe_payments", "card_last4": "2222"},
            }
        )
        # ... and the pending order that is to pay from the wallet
        orders.append({"id": f"OrdReuse{n}", "customer": f"u{n}@example.com", "status": "pending"})
    wallet = [{"customer": f"u{n}@example.com", "order": f"OrdFirst{n}"} for n in range(REUSERS)]
    return {"customers": customers, "orders": orders, "customer_payment_sources": wallet, "topics": ["orders.pending"]}


def test_no_order_gets_two_applied_use_patches(tmp_path, db_url):
    (tmp_path / "policy.toml").write_text(REUSE_POLICY)
    reuse = [f"OrdReuse{n}" for n in range(REUSERS)]
    with cluster(
        tmp_path,
        db_url,
        reuse_scenario(),
        workers=2,
        WEBHOOK_APP_POLICY=str(tmp_path / "policy.toml"),
        # the first attempt's retry comes after the second event has been handled
        WEBHOOK_APP_RETRY_BASE_SECONDS="8",
        WEBHOOK_APP_RETRY_MAX_SECONDS="8",
    ) as c:
        # each order's first use PATCH is applied but answered after the client's read timeout
        c.control(
            "PUT",
            "/faults",
            {
                "seed": 1,
                "rules": [
                    {
                        "route": "orders.patch",
                        "late_answer_share": 1.0,
                        "late_answer_seconds": READ_TIMEOUT + 1.0,
                        "requests": REUSERS,
                    }
                ],
            },
        )
        c.send("orders.pending", reuse)

        def paying() -> set[str]:
            return {o["id"] for o in c.control("GET", "/state")["orders"] if o["id"] in reuse and o["payment_source"]}

        wait_until(lambda: paying() == set(reuse), timeout=30, interval=0.1, what="the first use PATCHes applied")
        # meanwhile each customer's wallet gains a newer entry, and the event comes again
        cl = c.client()
        try:
            for n in range(REUSERS):
                cl.update_order(f"OrdOther{n}", {"_save_payment_source_to_customer_wallet": True})
        finally:
            cl.close()
        c.send("orders.pending", reuse)
        c.drained(timeout=60)
        uses = [p for p in c.patches() if "_customer_payment_source_id" in json.dumps(p["body"])]
        decisions = c.rows("SELECT order_id, outcome, guard, wallet_entry_id FROM decisions")

    entries: dict[str, list[str]] = {}
    for p in uses:
        if applied(p):
            oid = p["path"].rsplit("/", 1)[-1]
            entries.setdefault(oid, []).append(p["body"]["data"]["attributes"]["_customer_payment_source_id"])
    print("\napplied use PATCHes per order:", {o: len(e) for o, e in entries.items()})
    assert sum("late_answer" in p["faults"] for p in uses) == REUSERS  # the fault really happened
    assert {o: len(e) for o, e in entries.items()} == {o: 1 for o in reuse}
    # the second event's job found the first job's entry in place and ended the action with it
    for o in reuse:
        mine = [d for d in decisions if d["order_id"] == o and d["outcome"] == "applied"]
        assert [d["wallet_entry_id"] for d in mine] == entries[o]


# --- one backfill per gap ------------------------------------------------------------------------
MISSED = 12


def test_concurrent_reconciles_queue_each_missed_order_once(tmp_path, db_url):
    customers = [{"email": f"m{n}@example.com", "has_password": True} for n in range(MISSED)]
    orders = [
        {
            "id": f"OrdMissed{n:02d}",
            "customer": f"m{n}@example.com",
            "payment_source": {"type": "stripe_payments", "card_last4": f"{4000 + n}"},
        }
        for n in range(MISSED)
    ]
    scenario = {"customers": customers, "orders": orders, "topics": []}
    with cluster(tmp_path, db_url, scenario, workers=2, web=False) as c:
        # every read of an order is slow, so the two runs overlap; the workers act on what the
        # first run queued (the order changes) before the second reads it
        c.control("PUT", "/faults", {"rules": [{"route": "orders.get", "latency_ms": 300}]})
        first = c.cli("reconcile", "--since", "1h", background=True)
        time.sleep(1.5)
        second = c.cli("reconcile", "--since", "1h", background=True)
        for run in (first, second):
            out, err = run.communicate(timeout=60)
            assert run.returncode == 0, err[-2000:]
        c.drained(timeout=60)
        backfills = c.rows(
            "SELECT order_id, COUNT(*) AS n FROM deliveries WHERE secret_label = 'reconcile' GROUP BY order_id"
        )
        gets = [r for r in c.control("GET", "/requests?route=orders.get")["requests"]]
        patched = Counter(p["path"].rsplit("/", 1)[-1] for p in c.patches() if applied(p))

    per_order = {r["order_id"]: int(r["n"]) for r in backfills}
    print("\nbackfill jobs per missed order:", per_order)
    assert per_order == {o["id"]: 1 for o in orders}
    # the runs did overlap: both read some orders (the second after the first's job had acted)
    assert len(gets) > MISSED
    assert patched == {o["id"]: 1 for o in orders}


# --- no requeue lost to a prune ------------------------------------------------------------------
DEAD = 30
ADMIN_KEY = "scaleout-admin-key-0123456789abcdef"


def test_every_requeue_answered_202_is_attempted_while_prunes_run(tmp_path, db_url):
    customers = [{"email": f"d{n}@example.com", "has_password": True} for n in range(DEAD)]
    orders = [
        {
            "id": f"OrdDead{n:02d}",
            "customer": f"d{n}@example.com",
            "payment_source": {"type": "stripe_payments", "card_last4": f"{5000 + n}"},
        }
        for n in range(DEAD)
    ]
    retention = str(2 / 86400)  # two seconds
    with cluster(
        tmp_path,
        db_url,
        {"customers": customers, "orders": orders},
        workers=1,
        WEBHOOK_APP_MAX_ATTEMPTS="1",
        WEBHOOK_APP_ADMIN_KEYS=ADMIN_KEY,
        WEBHOOK_APP_RETAIN_BODIES_DAYS=retention,
        WEBHOOK_APP_RETAIN_RECORDS_DAYS=retention,
    ) as c:
        c.control("PUT", "/faults", {"rules": [{"route": "orders.patch", "error_share": 1.0}]})
        c.send("orders.place", [o["id"] for o in orders])
        dead = lambda: c.rows("SELECT id, order_id FROM jobs WHERE state = 'dead'")  # noqa: E731
        wait_until(lambda: len(dead()) == DEAD, timeout=60, interval=0.2, what="every job dead-lettered")
        jobs = {int(r["id"]): r["order_id"] for r in dead()}
        time.sleep(2.5)  # past the retention: each dead letter is prunable until it is requeued
        c.control("DELETE", "/faults")
        token = c.cli("admin-token").stdout.strip()

        stop = threading.Event()
        go = threading.Barrier(3)

        def prune_loop() -> None:  # `db prune`, as fast as it goes, beside the requeues
            store = open_store(c.db_url)
            try:
                store.ping()
                go.wait()
                while not stop.is_set():
                    now = time.time()
                    store.prune(bodies_before=now - 2, records_before=now - 2, limit=1, now=now)
                    time.sleep(0.02)  # about as fast as the requeues come: they meet over the same jobs
            finally:
                store.close()

        pruners = [threading.Thread(target=prune_loop) for _ in range(2)]
        started = time.monotonic()
        for t in pruners:
            t.start()
        answers: dict[int, int] = {}
        session = requests.Session()

        def requeue(job_id: int) -> None:
            r = session.post(
                f"{c.web_urls[job_id % 2]}/admin/dead-letters/{job_id}/requeue",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            answers[job_id] = r.status_code

        try:
            requeue(min(jobs))  # a first request: the connections are open when the race starts
            go.wait()
            with ThreadPoolExecutor(max_workers=6) as pool:
                list(pool.map(requeue, sorted(jobs)[1:]))  # oldest first, as the prune goes
            requeued = {jobs[j] for j, status in answers.items() if status == 202}
            wait_until(
                lambda: requeued <= {p["path"].rsplit("/", 1)[-1] for p in c.patches() if applied(p)},
                timeout=30,
                interval=0.2,
                what="every requeued order attempted",
            )
        finally:
            stop.set()
            for t in pruners:
                t.join(timeout=30)
            session.close()
    print(
        f"\nrace run in {time.monotonic() - started:.1f} s;",
        "requeues answered:",
        dict(Counter(answers.values())),
        "requeued and attempted:",
        len(requeued),
    )
    assert set(answers.values()) <= {202, 404}  # requeued, or pruned before its requeue
    assert requeued  # the race was run
