"""Faults injected into the running system, each with its stated expectation.

Real processes throughout: `webhook-app web` / `worker` / `serve`, the sandbox as Commerce Layer,
SQLite files and a private PostgreSQL cluster; the faults are real too (SIGKILL, a stopped
database server, a held SQLite lock, a full filesystem, Commerce Layer answering 5xx, 429 or
hanging). Counts of what was sent and lost go to test-artifacts/faults.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from commercelayer_sandbox import Sandbox
from support import SECRET, signed_headers
from support.builders import order_body
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.signing import sign
from webhook_app.store import DeliveryFilter, open_store

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
CLIENT = {"client_id": "faults-client", "client_secret": "faults-client-secret-0123"}
ADMIN_KEY = "faults-admin-key-0123456789"
SB_SECRET = "faults-shared-secret-0123456789"


def record_counts(name: str, **counts) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "faults.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = counts
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run as root for {what}")
        pytest.skip(f"{what} needs root")


class Stack:
    """Processes of one test, stopped (and their logs kept) at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.procs: list[Service] = []

    def start(self, args: list[str], env: dict[str, str], name: str, health: str | None = None) -> Service:
        svc = Service(args, env, self.tmp / f"{name}.log")
        self.procs.append(svc)
        if health:
            wait_http(health, proc=svc.proc)
        return svc

    def sandbox(self, scenario: dict) -> str:
        port = free_port()
        f = self.tmp / "scenario.json"
        f.write_text(json.dumps(scenario))
        url = f"http://127.0.0.1:{port}"
        self.start(["sandbox", "--port", str(port), "--seed", str(f)], {}, "sandbox", url + "/_sandbox/health")
        return url

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    s.stop()


def service_env(sb_url: str, db_url: str, **extra: str) -> dict[str, str]:
    env = {
        "CL_WEBHOOK_SECRETS": f"cl:{SB_SECRET},test:{SECRET}",
        "CL_CLIENT_ID": CLIENT["client_id"],
        "CL_CLIENT_SECRET": CLIENT["client_secret"],
        "CL_API_BASE": sb_url + "/api",
        "CL_AUTH_URL": sb_url + "/oauth/token",
        "WEBHOOK_APP_MODE": "enforce",
        "WEBHOOK_APP_DATABASE_URL": db_url,
        "WEBHOOK_APP_POLL_INTERVAL": "0.05",
        "WEBHOOK_APP_ADMIN_KEYS": ADMIN_KEY,
        "CL_CONNECT_TIMEOUT": "1",
    }
    env.update(extra)
    return env


def scenario(callback: str, orders: int = 1, **sandbox) -> dict:
    return {
        "sandbox": {
            "api_limits": ["1000/60"],
            "endpoint_limits": ["500/10"],
            **sandbox,
            "sender": {"backoff_base": 0.2, "backoff_max": 1, "timeout": 5},
        },
        "clients": [CLIENT],
        "customers": [{"email": "reg@example.com", "has_password": True}],
        "orders": [
            {
                "id": f"OrdFault{n:02d}",
                "customer": "reg@example.com",
                # a card of its own per order: one customer typing the same card again is the
                # wallet guards' business (card_already_in_wallet), not these fault tests'
                "payment_source": {"type": "stripe_payments", "card_last4": f"{4200 + n}"},
            }
            for n in range(orders)
        ],
        "webhooks": [
            {
                "id": "HookFaultP",
                "topic": "orders.place",
                "callback_url": callback,
                "include_resources": ["customer", "payment_source", "available_customer_payment_sources"],
                "shared_secret": SB_SECRET,
            }
        ],
    }


def control(sb_url: str, method: str, path: str, body=None):
    r = requests.request(method, sb_url + "/_sandbox" + path, json=body, timeout=60)
    assert r.status_code < 300, r.text
    return r.json() if r.content else None


def queue(db_url: str):
    store = open_store(db_url)
    try:
        return store.queue_stats(now=time.time())
    finally:
        store.close()


def settled(db_url: str) -> bool:
    q = queue(db_url)
    return q.pending == 0 and q.running == 0


# --- 1. a worker killed in the middle of a PATCH ------------------------------------------------


def test_worker_killed_mid_patch_job_is_reclaimed_and_order_flagged_once(stack, tmp_path):
    """Expectation: the job is claimed again after its lease, the next worker reads the order
    before writing, and the order ends with exactly one wallet entry (one flag)."""
    web_port = free_port()
    sb = stack.sandbox(scenario(f"http://127.0.0.1:{web_port}/webhooks/commercelayer"))
    # the first PATCH hangs 2 s at Commerce Layer, then is applied (a slow server)
    control(
        sb,
        "PUT",
        "/faults",
        {"rules": [{"route": "orders.patch", "hang_share": 1.0, "hang_seconds": 2, "requests": 1}]},
    )
    db = f"sqlite:///{tmp_path / 'kill.db'}"
    env = service_env(sb, db, WEBHOOK_APP_LEASE_SECONDS="6", CL_READ_TIMEOUT="4")
    stack.start(["web", "--bind", f"127.0.0.1:{web_port}"], env, "web", f"http://127.0.0.1:{web_port}/healthz")
    worker = stack.start(["worker"], env, "worker1")
    control(sb, "POST", "/events", {"topic": "orders.place", "order_id": "OrdFault00"})
    store = open_store(db)
    wait_until(lambda: store.action_state("OrdFault00", "save_payment_source") == "in_flight", what="PATCH in flight")
    time.sleep(0.5)  # the PATCH is now hanging at the sandbox
    worker.kill()
    killed_at = time.monotonic()
    wait_until(
        lambda: control(sb, "GET", "/stats").get("wallet", {}).get("entries_created") == 1,
        what="the hung PATCH applied",
    )
    stack.start(["worker"], env, "worker2")
    wait_until(lambda: settled(db), timeout=30, what="job finished")
    reclaimed_after = time.monotonic() - killed_at
    [listed] = store.list_deliveries(DeliveryFilter())
    d = store.get_delivery(listed.id)
    store.close()
    stats = control(sb, "GET", "/stats")
    wallet = [
        w for w in control(sb, "GET", "/state")["customer_payment_sources"] if w["origin_order_id"] == "OrdFault00"
    ]
    assert len(wallet) == 1 and stats["wallet"]["save_flags"] == 1
    # (the second worker may first find the dead one's action claim still leased for a few ms:
    # a `deferred` attempt, numbered like any other)
    assert [a["outcome"] for a in d.attempts if a["outcome"] != "deferred"] == ["lease_expired", "applied"]
    assert [a["number"] for a in d.attempts] == list(range(1, len(d.attempts) + 1))
    assert d.decisions[-1]["outcome"] == "applied" and "already applied" in d.decisions[-1]["reason"]
    assert d.decisions[-1]["wallet_entry_id"] == wallet[0]["id"]
    assert reclaimed_after >= 5  # not before the lease ran out
    record_counts(
        "worker_killed_mid_patch",
        wallet_entries=len(wallet),
        patches_applied=stats["wallet"]["save_flags"],
        attempts=len(d.attempts),
    )


# --- 2. a gunicorn worker killed during intake ----------------------------------------------------


def test_gunicorn_worker_killed_during_intake_every_2xx_is_stored(stack, tmp_path):
    """Expectation: a delivery that got a 2xx is in the store, whatever was killed; requests the
    kill cut off got no 2xx, and sending them again stores them."""
    port = free_port()
    db = f"sqlite:///{tmp_path / 'intake.db'}"
    web = stack.start(
        ["web", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        {"CL_WEBHOOK_SECRETS": f"test:{SECRET}", "WEBHOOK_APP_DATABASE_URL": db},
        "web",
        f"http://127.0.0.1:{port}/healthz",
    )
    url = f"http://127.0.0.1:{port}/webhooks/commercelayer"
    bodies = [order_body(f"ordK{n:05d}") for n in range(600)]
    results: dict[int, object] = {}
    lock = threading.Lock()
    it = iter(range(len(bodies)))

    def send():
        with requests.Session() as s:
            while True:
                with lock:
                    i = next(it, None)
                if i is None:
                    return
                try:
                    r = s.post(url, data=bodies[i], headers=signed_headers(bodies[i]), timeout=10)
                    out: object = r.status_code
                except requests.RequestException as exc:
                    out = type(exc).__name__
                with lock:
                    results[i] = out

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    wait_until(lambda: len(results) >= 150, what="150 answers")
    pid = web.proc.pid  # its children from /proc (no pgrep needed: procps is not on every machine)

    def children_of(p: str) -> list[str]:
        return Path(f"/proc/{p}/task/{p}/children").read_text().split()

    children = children_of(str(pid))
    # the master's children: its 2 gunicorn workers and the commit writer's keeper (a fork of the
    # master, so with the master's command line), whose child is the writer (group commit)
    workers = [
        c
        for c in children
        if not any(b"commit-writer" in Path(f"/proc/{g}/cmdline").read_bytes() for g in children_of(c))
    ]
    assert len(workers) == 2 and len(children) == 3, children
    children = workers
    os.kill(int(children[0]), signal.SIGKILL)
    for t in threads:
        t.join()
    acked = [i for i, r in results.items() if isinstance(r, int) and 200 <= r < 300]
    store = open_store(db)
    stored = {d.order_id for d in store.list_deliveries(DeliveryFilter(limit=10_000))}
    assert {f"ordK{i:05d}" for i in acked} <= stored  # nothing acknowledged is lost
    cut = [i for i in results if i not in acked]
    for i in cut:  # what the kill cut off is accepted when sent again (as Commerce Layer retries)
        r = requests.post(url, data=bodies[i], headers=signed_headers(bodies[i]), timeout=10)
        assert r.status_code in (200, 202)
    stored = {d.order_id for d in store.list_deliveries(DeliveryFilter(limit=10_000))}
    store.close()
    assert len(stored) == 600
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).ok  # the arbiter replaced the worker
    record_counts(
        "gunicorn_worker_killed",
        sent=len(results),
        acknowledged=len(acked),
        cut_off=len(cut),
        lost_acknowledged=len({f"ordK{i:05d}" for i in acked} - stored),
        stored=len(stored),
    )


# --- 3. PostgreSQL stopped and started under load ---------------------------------------------


def unavailable(why: str) -> None:
    """Skip with the reason; under CI the part must be there, so fail."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this: {why}", pytrace=False)
    pytest.skip(why)


def postgres_server_bin() -> Path:
    """Debian's PostgreSQL server programs and the postgres user they run as, or skip."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        unavailable("no PostgreSQL server programs in /usr/lib/postgresql (apt-get install postgresql)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        unavailable("no postgres user to run a private cluster as (apt-get install postgresql)")
    if not shutil.which("runuser"):
        unavailable("runuser is not available (util-linux)")
    return versions[-1]


class PrivatePostgres:
    """A throwaway PostgreSQL cluster we may stop and start at will (as the postgres user)."""

    def __init__(self) -> None:
        bindir = postgres_server_bin()
        self.pg_ctl, initdb = str(bindir / "pg_ctl"), str(bindir / "initdb")
        # outside pytest's tmp tree, which the postgres user cannot enter
        self.root = Path(tempfile.mkdtemp(prefix="webhook-app-pg-"))
        self.dir = self.root / "pgdata"
        self.dir.mkdir()
        shutil.chown(self.root, "postgres")
        shutil.chown(self.dir, "postgres")
        self.port = free_port()
        self._run(initdb, "-D", str(self.dir), "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        r = subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {r.stderr.strip()[-500:]}")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def start(self) -> None:
        self._run(
            self.pg_ctl,
            "-D",
            str(self.dir),
            "-w",
            "-l",
            str(self.dir / "log"),
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.dir), "-w", "-m", mode, "stop")


def test_postgres_stopped_and_started_under_load(stack, tmp_path):
    """Expectation: while the database is down, intake answers 503 (which Commerce Layer retries),
    never 500 and never 2xx; it recovers by itself when the database returns; every delivery
    acknowledged with a 2xx is stored."""
    need_root("a private PostgreSQL cluster")
    pg = PrivatePostgres()
    pg.start()
    try:
        env = {
            "CL_WEBHOOK_SECRETS": f"test:{SECRET}",
            "WEBHOOK_APP_DATABASE_URL": pg.url,
            "WEBHOOK_APP_DB_TIMEOUT": "1",
        }
        up = subprocess.run(
            [sys.executable, "-m", "webhook_app", "db", "upgrade"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert up.returncode == 0, up.stderr
        port = free_port()
        stack.start(
            ["web", "--bind", f"127.0.0.1:{port}", "--workers", "2"], env, "web", f"http://127.0.0.1:{port}/readyz"
        )
        url = f"http://127.0.0.1:{port}/webhooks/commercelayer"
        # (sent, answered, order id, status): a request is judged by when it was sent, not by when
        # its answer came back (on a loaded machine a 202 committed before the stop can arrive late)
        results: list[tuple[float, float, str, int]] = []
        stop = threading.Event()
        lock = threading.Lock()
        counter = iter(range(10**6))

        def load():
            with requests.Session() as s:
                while not stop.is_set():
                    with lock:
                        n = next(counter)
                    oid = f"ordP{n:06d}"
                    body = order_body(oid)
                    sent = time.monotonic()
                    r = s.post(url, data=body, headers=signed_headers(body), timeout=10)
                    with lock:
                        results.append((sent, time.monotonic(), oid, r.status_code))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        pg.stop("fast")
        down_at = time.monotonic()  # pg_ctl -w has returned: the server is down
        time.sleep(3)
        readyz_down = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code
        starting_at = time.monotonic()  # from here the server may accept before pg_ctl -w returns
        pg.start()
        up_at = time.monotonic()
        time.sleep(4)
        stop.set()
        for t in threads:
            t.join()
        statuses = Counter(code for _, _, _, code in results)
        assert set(statuses) <= {202, 503}, statuses  # never 500, never anything else
        assert statuses[503] > 0 and readyz_down == 503
        # sent once the database was down, answered before it was started again
        during = [code for sent, answered, _, code in results if down_at < sent and answered < starting_at]
        assert during and all(code == 503 for code in during)  # no 2xx while the database is down
        late = [code for sent, _, _, code in results if sent > up_at + 2]
        assert late and all(code == 202 for code in late)  # recovered by itself
        store = open_store(pg.url)
        stored = {d.order_id for d in store.list_deliveries(DeliveryFilter(limit=100_000))}
        acked = {oid for _, _, oid, code in results if code == 202}
        assert acked <= stored  # nothing acknowledged is lost
        # a 503 may hide a commit that happened (the connection died during COMMIT): Commerce
        # Layer's retry is then answered as a duplicate; nothing is stored twice.
        refused = [oid for _, _, oid, code in results if code == 503]
        for oid in refused:
            body = order_body(oid)
            r = requests.post(url, data=body, headers=signed_headers(body), timeout=10)
            assert r.status_code in (200, 202)
        stored_after = store.list_deliveries(DeliveryFilter(limit=100_000))
        store.close()
        assert len(stored_after) == len({d.identity for d in stored_after}) == len(results)
        record_counts(
            "postgres_restart",
            sent=len(results),
            answers={str(k): v for k, v in statuses.items()},
            acknowledged=len(acked),
            lost_acknowledged=len(acked - stored),
            retried_after_503=len(refused),
            stored_after_retries=len(stored_after),
        )
    finally:
        stack.stop()
        with contextlib.suppress(RuntimeError):
            pg.stop("immediate")
        pg.remove()


# --- 4. Commerce Layer answering 5xx, 429 or hanging for a spell ------------------------------------


def test_commerce_layer_spell_backoff_no_storm_dead_letter_and_requeue(stack, tmp_path):
    """Expectation: during a spell of 5xx, hangs past the read timeout and 429s the worker retries
    with backoff (a bounded number of calls, not a storm), every order still ends with exactly
    one wallet entry; an order that fails for longer than the attempts allow is dead-lettered,
    and requeueing it (admin API) flags it once the spell is over."""
    web_port = free_port()
    sb = stack.sandbox(scenario(f"http://127.0.0.1:{web_port}/webhooks/commercelayer", orders=9, api_limits=["8/1"]))
    db = f"sqlite:///{tmp_path / 'spell.db'}"
    env = service_env(
        sb,
        db,
        WEBHOOK_APP_RETRY_BASE_SECONDS="0.5",
        WEBHOOK_APP_RETRY_MAX_SECONDS="4",
        WEBHOOK_APP_MAX_ATTEMPTS="8",
        CL_READ_TIMEOUT="1",
        CL_RATE_LIMITS="1000/60",
    )
    svc = stack.start(
        ["serve", "--bind", f"127.0.0.1:{web_port}"], env, "serve", f"http://127.0.0.1:{web_port}/healthz"
    )
    spell = {
        "seed": 3,
        "rules": [
            {
                "route": "orders.patch",
                "error_share": 0.5,
                "error_status": 503,
                "hang_share": 0.25,
                "hang_seconds": 1.5,
                "seconds": 6,
            }
        ],
    }
    control(sb, "PUT", "/faults", spell)
    started = time.monotonic()
    ids = [f"OrdFault{n:02d}" for n in range(8)]
    control(sb, "POST", "/events", {"topic": "orders.place", "order_ids": ids})
    assert control(sb, "POST", "/sender/drain", {"timeout": 30})["drained"]
    wait_until(lambda: settled(db) and queue(db).done >= len(ids), timeout=90, interval=0.3, what="spell ridden out")
    stats = control(sb, "GET", "/stats")
    patch_calls = sum(stats["by_route"]["orders.patch"].values())
    wallet = Counter(w["origin_order_id"] for w in control(sb, "GET", "/state")["customer_payment_sources"])
    assert all(wallet[o] == 1 for o in ids) and stats.get("wallet", {}).get("duplicates", 0) == 0
    # the spell really hit: failures were answered, and retries were bounded by the backoff
    failures = sum(n for code, n in stats["by_route"]["orders.patch"].items() if code != "200")
    assert failures >= 3
    assert patch_calls <= len(ids) * 8  # at most max_attempts calls per order
    assert queue(db).dead == 0
    elapsed = time.monotonic() - started

    # a permanent failure: 503 for every PATCH of the last order until we say otherwise
    control(sb, "PUT", "/faults", {"rules": [{"route": "orders.patch", "error_share": 1.0, "error_status": 503}]})
    control(sb, "POST", "/events", {"topic": "orders.place", "order_id": "OrdFault08"})
    wait_until(lambda: queue(db).dead == 1, timeout=120, interval=0.3, what="dead letter")
    store = open_store(db)
    [dead] = store.list_deliveries(DeliveryFilter(status="dead"))
    store.close()
    assert dead.job["attempts"] == 8 and "attempts exhausted" in dead.job["last_error"]
    control(sb, "DELETE", "/faults")
    token = subprocess.run(
        [sys.executable, "-m", "webhook_app", "admin-token", "--ttl", "10m"],
        env={**os.environ, "WEBHOOK_APP_ADMIN_KEYS": ADMIN_KEY},
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    r = requests.post(
        f"{svc.operator_url}/admin/dead-letters/{dead.job['id']}/requeue",  # serve's operator address
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 202, r.text
    wait_until(lambda: settled(db), timeout=30, what="requeued job done")
    wallet = Counter(w["origin_order_id"] for w in control(sb, "GET", "/state")["customer_payment_sources"])
    assert wallet["OrdFault08"] == 1 and queue(db).dead == 0
    record_counts(
        "commerce_layer_spell",
        orders=len(ids),
        patch_calls_during_spell=patch_calls,
        failures_answered=failures,
        seconds_to_ride_out=round(elapsed, 1),
        dead_lettered_then_requeued=1,
    )


# --- 5. the same event ten times, concurrently, to different instances --------------------------


def test_same_event_ten_times_concurrently_to_two_instances_one_job_one_patch(stack, tmp_path):
    """Expectation: ten simultaneous copies of one delivery over two web instances on one
    PostgreSQL database give one stored delivery, one job and one PATCH."""
    from support import pg_schema_url, require_postgres

    require_postgres()
    with pg_schema_url() as db:
        sb = stack.sandbox(scenario("http://127.0.0.1:9/unused"))
        env = service_env(sb, db)
        assert (
            subprocess.run(
                [sys.executable, "-m", "webhook_app", "db", "upgrade"],
                env={**os.environ, **env},
                capture_output=True,
                timeout=60,
            ).returncode
            == 0
        )
        ports = [free_port(), free_port()]
        for n, p in enumerate(ports):
            stack.start(
                ["web", "--bind", f"127.0.0.1:{p}", "--workers", "2"], env, f"web{n}", f"http://127.0.0.1:{p}/readyz"
            )
        stack.start(["worker"], env, "worker")
        sbx = Sandbox()
        sbx.load_scenario(scenario("http://127.0.0.1:9/unused"))
        body = sbx.webhook_body(sbx.state.order("OrdFault00"), next(iter(sbx.state.webhooks.values())), "orders.place")
        headers = {
            "Content-Type": "application/json",
            "X-CommerceLayer-Topic": "orders.place",
            "X-CommerceLayer-Signature": sign(body, secret=SB_SECRET),
        }
        barrier = threading.Barrier(10)
        answers = []

        def post(port):
            barrier.wait()
            r = requests.post(f"http://127.0.0.1:{port}/webhooks/commercelayer", data=body, headers=headers, timeout=10)
            answers.append((r.status_code, r.json()["status"], r.json()["delivery_id"]))

        threads = [threading.Thread(target=post, args=(ports[i % 2],)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert Counter(a[1] for a in answers) == {"accepted": 1, "duplicate": 9}
        assert len({a[2] for a in answers}) == 1
        wait_until(lambda: settled(db), timeout=30, what="job done")
        q = queue(db)
        assert q.done == 1 and q.pending == q.running == q.dead == 0
        patches = [r for r in control(sb, "GET", "/requests?route=orders.patch")["requests"] if r["status"] == 200]
        assert len(patches) == 1
        record_counts("same_event_ten_times", sent=10, accepted=1, duplicates=9, jobs=q.done, patches=len(patches))


# --- 6. SQLite locked or the disk full ----------------------------------------------------------


def test_sqlite_locked_is_503_with_a_log_line_never_2xx(stack, tmp_path):
    """Expectation: while another process holds the database's write lock past the timeout,
    intake answers 503 with a clear detail and logs it; the refused delivery is not stored;
    once the lock is released the same delivery is accepted."""
    path = tmp_path / "locked.db"
    port = free_port()
    web = stack.start(
        ["web", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        {
            "CL_WEBHOOK_SECRETS": f"test:{SECRET}",
            "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{path}",
            "WEBHOOK_APP_DB_TIMEOUT": "0.5",
        },
        "web",
        f"http://127.0.0.1:{port}/healthz",
    )
    url = f"http://127.0.0.1:{port}/webhooks/commercelayer"
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    body = order_body("ordLock1")
    started = time.monotonic()
    r = requests.post(url, data=body, headers=signed_headers(body), timeout=10)
    waited = time.monotonic() - started
    holder.execute("ROLLBACK")
    holder.close()
    assert r.status_code == 503 and "locked" in r.json()["errors"][0]["detail"] and r.headers["Retry-After"]
    assert waited < 3
    assert '"status":503' in web.output() and "locked" in web.output()
    store = open_store(f"sqlite:///{path}")
    assert store.list_deliveries(DeliveryFilter()) == []
    assert requests.post(url, data=body, headers=signed_headers(body), timeout=10).status_code == 202
    assert [d.order_id for d in store.list_deliveries(DeliveryFilter())] == ["ordLock1"]
    store.close()


def test_sqlite_disk_full_is_503_never_2xx_for_an_unsaved_delivery(stack, tmp_path):
    """Expectation: on a full filesystem intake answers 503 with a clear detail and a log line;
    every 2xx it gave is in the store; when space returns it accepts again by itself."""
    need_root("mounting a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not shutil.which("mount"):
        unavailable("mount is not available (util-linux)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if mounted.returncode != 0:  # root without CAP_SYS_ADMIN (a container), or no mount(8)
        unavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()[:200]}")
    try:
        db = f"sqlite:///{mnt / 'full.db'}"
        port = free_port()
        web = stack.start(
            ["web", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
            {"CL_WEBHOOK_SECRETS": f"test:{SECRET}", "WEBHOOK_APP_DATABASE_URL": db},
            "web",
            f"http://127.0.0.1:{port}/healthz",
        )
        url = f"http://127.0.0.1:{port}/webhooks/commercelayer"
        first = order_body("ordFullFirst")  # the connection is open before the disk fills
        assert requests.post(url, data=first, headers=signed_headers(first), timeout=10).status_code == 202
        filler = mnt / "filler"
        with open(filler, "wb") as f:  # fill the filesystem to the last block
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        answers: dict[str, int] = {}
        for n in range(40):
            body = order_body(f"ordFull{n:03d}", pad_to=30_000)
            answers[f"ordFull{n:03d}"] = requests.post(
                url, data=body, headers=signed_headers(body), timeout=10
            ).status_code
        codes = Counter(answers.values())
        assert set(codes) <= {202, 503} and codes[503] > 0, codes
        assert "full" in web.output()
        filler.unlink()
        body = order_body("ordFull999", pad_to=30_000)
        assert requests.post(url, data=body, headers=signed_headers(body), timeout=10).status_code == 202
        store = open_store(db)
        stored = {d.order_id for d in store.list_deliveries(DeliveryFilter(limit=1000))}
        store.close()
        acked = {o for o, c in answers.items() if c == 202}
        assert acked <= stored and {"ordFull999", "ordFullFirst"} <= stored
        assert not ({o for o, c in answers.items() if c == 503} & stored)
        record_counts(
            "sqlite_disk_full",
            sent=len(answers) + 1,
            answers={str(k): v for k, v in codes.items()},
            lost_acknowledged=len(acked - stored),
        )
    finally:
        stack.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_readyz_says_unavailable_while_the_sqlite_disk_is_full(tmp_path, settings_factory):
    """Expectation: /readyz checks that the store can write: 503 on a full filesystem, 200 again
    once there is room."""
    need_root("mounting a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not shutil.which("mount"):
        unavailable("mount is not available (util-linux)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()[:200]}")
    from webhook_app.store.sqlite import SQLiteStore
    from webhook_app.web import create_app

    try:
        store = SQLiteStore(str(mnt / "ready.db"))
        store.migrate()
        now = [1000.0]  # /readyz keeps its answer a second: each check below is two seconds later
        settings = settings_factory(database_url=f"sqlite:///{mnt / 'ready.db'}")
        client = create_app(settings, store=store, clock=lambda: now[0]).test_client()
        assert client.get("/readyz").status_code == 200
        filler = mnt / "filler"
        try:
            with open(filler, "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        except OSError:
            pass  # full, to the last block
        now[0] += 2
        r = client.get("/readyz")
        assert r.status_code == 503 and "full" in r.json["checks"]["database"], r.json
        filler.unlink()
        now[0] += 2
        assert client.get("/readyz").status_code == 200
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# --- 7. a worker stopped (not killed) past its lease, then continued -----------------------------


@pytest.mark.parametrize("same_job", [True, False], ids=["its-job-taken-over", "another-job-of-the-order"])
def test_a_worker_stopped_past_its_lease_does_not_save_after_another_worker_did(stack, tmp_path, same_job):
    """Expectation: a worker frozen (SIGSTOP: a paused VM, a long GC, a swapped-out host) while
    it holds an order's save, past its lease, then continued (SIGCONT) after another worker took
    the save over and applied it, sends no second save: the order keeps one wallet entry. The
    frozen worker is in the read before its write (the webhook body carries no wallet); the other
    worker takes over either the same job (its lease ran out) or another delivery of the order."""
    web_port = free_port()
    sc = scenario(f"http://127.0.0.1:{web_port}/webhooks/commercelayer")
    sc["webhooks"][0]["include_resources"] = ["customer", "payment_source"]  # no wallet: read first
    sb = stack.sandbox(sc)
    # the first worker's read of the order hangs 1.5 s: it is frozen in the middle of it
    control(
        sb,
        "PUT",
        "/faults",
        {"rules": [{"route": "orders.get", "hang_share": 1.0, "hang_seconds": 1.5, "requests": 1}]},
    )
    db = f"sqlite:///{tmp_path / 'stopped.db'}"
    env = service_env(sb, db, WEBHOOK_APP_LEASE_SECONDS="4", CL_READ_TIMEOUT="2.5")
    stack.start(["web", "--bind", f"127.0.0.1:{web_port}"], env, "web", f"http://127.0.0.1:{web_port}/healthz")
    frozen = stack.start(["worker"], env, "worker1")
    control(sb, "POST", "/events", {"topic": "orders.place", "order_id": "OrdFault00"})
    store = open_store(db)
    wait_until(lambda: store.action_state("OrdFault00", "save_payment_source") == "in_flight", what="save claimed")
    time.sleep(0.5)  # in the hanging read
    os.killpg(frozen.proc.pid, signal.SIGSTOP)
    try:
        if not same_job:  # another delivery of the order (the order changed): a job of its own
            [first] = store.list_deliveries(DeliveryFilter())
            doc = json.loads(store.get_delivery(first.id).body)
            doc["data"]["attributes"]["updated_at"] = "2030-01-01T00:00:00.000Z"
            body = json.dumps(doc).encode()
            requests.post(
                f"http://127.0.0.1:{web_port}/webhooks/commercelayer",
                data=body,
                headers=signed_headers(body, topic="orders.place"),
                timeout=10,
            ).raise_for_status()
        time.sleep(4.5)  # past the frozen worker's lease
        stack.start(["worker"], env, "worker2")
        wait_until(lambda: store.action_state("OrdFault00", "save_payment_source") == "done", what="save taken over")
        wait_until(
            lambda: control(sb, "GET", "/stats").get("wallet", {}).get("save_flags") == 1, what="the save applied"
        )
    finally:
        os.killpg(frozen.proc.pid, signal.SIGCONT)
    time.sleep(3)  # its read answered, the frozen worker goes on from where it was
    stats = control(sb, "GET", "/stats")
    wallet = [
        w for w in control(sb, "GET", "/state")["customer_payment_sources"] if w["origin_order_id"] == "OrdFault00"
    ]
    store.close()
    record_counts(f"worker_stopped_past_lease_{'same' if same_job else 'other'}_job", wallet_entries=len(wallet))
    assert stats["wallet"]["save_flags"] == 1 and len(wallet) == 1, (stats["wallet"], wallet)
    assert "taken over before the call to Commerce Layer" in frozen.output()


def test_a_worker_held_by_the_rate_limit_past_its_lease_does_not_save_after_another_worker_did(stack, tmp_path):
    """Expectation: a worker that waits for a slot of its Commerce Layer rate limit (a full
    window: a backfill, a burst) longer than its lease, while another worker takes the order's
    save over and applies it, sends no second save once its slot comes. The wait is inside the
    client, after the attempt last looked at its claims."""
    web_port = free_port()
    sc = scenario(f"http://127.0.0.1:{web_port}/webhooks/commercelayer", orders=2)
    sc["customers"].append({"email": "other@example.com", "has_password": True})
    sc["orders"][1]["customer"] = "other@example.com"  # its save tells nothing of the first's wallet
    sb = stack.sandbox(sc)
    db = f"sqlite:///{tmp_path / 'limited.db'}"
    env = service_env(sb, db, WEBHOOK_APP_LEASE_SECONDS="4", CL_READ_TIMEOUT="2.5")
    stack.start(["web", "--bind", f"127.0.0.1:{web_port}"], env, "web", f"http://127.0.0.1:{web_port}/healthz")
    held = stack.start(["worker"], {**env, "CL_RATE_LIMITS": "1/9"}, "worker1")
    # the held worker's one call of the window: the save of another order
    control(sb, "POST", "/events", {"topic": "orders.place", "order_id": "OrdFault01"})
    wait_until(
        lambda: control(sb, "GET", "/stats").get("wallet", {}).get("save_flags") == 1, what="the first save applied"
    )
    control(sb, "POST", "/events", {"topic": "orders.place", "order_id": "OrdFault00"})
    store = open_store(db)
    wait_until(lambda: store.action_state("OrdFault00", "save_payment_source") == "in_flight", what="save claimed")
    time.sleep(4.5)  # the held worker is still waiting for its slot, past its lease
    stack.start(["worker"], env, "worker2")
    wait_until(lambda: store.action_state("OrdFault00", "save_payment_source") == "done", what="save taken over")
    wait_until(lambda: control(sb, "GET", "/stats")["wallet"]["save_flags"] == 2, what="the save applied")
    # the held worker's slot comes: it gives the job up, whatever it did with it
    wait_until(lambda: '"outcome":"lost"' in held.output(), timeout=30, what="the held worker gave the job up")
    stats = control(sb, "GET", "/stats")
    wallet = [
        w for w in control(sb, "GET", "/state")["customer_payment_sources"] if w["origin_order_id"] == "OrdFault00"
    ]
    store.close()
    record_counts("worker_held_by_rate_limit_past_lease", wallet_entries=len(wallet))
    assert stats["wallet"]["save_flags"] == 2 and len(wallet) == 1, (stats["wallet"], wallet)
    assert "taken over before the call to Commerce Layer" in held.output()
