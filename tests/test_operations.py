"""Replay, policy diff, reconcile and webhook registration against real HTTP peers."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import threading
import time
import tomllib

import pytest
from support import SECRET, base_env, signed_headers
from support.builders import order_body
from support.sandbox import CLIENT_ID, CLIENT_SECRET, running
from werkzeug.serving import make_server

from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.config import bundled_policy_path
from webhook_app.errors import UsageError
from webhook_app.events import Delivery
from webhook_app.ops.reconcile import reconcile
from webhook_app.ops.registration import register, status
from webhook_app.ops.replay import Replayer, describe, from_files, from_store
from webhook_app.ops.whatif import diff
from webhook_app.policy import load_policy, parse_policy
from webhook_app.signing import parse_secrets
from webhook_app.store import DeliveryFilter
from webhook_app.store.sqlite import SQLiteStore
from webhook_app.timefmt import parse_since
from webhook_app.web import create_app
from webhook_app.worker import Worker

REPLAY_KEY = "replay-key-abcdef0123456789"
SECRETS = parse_secrets(f"main:{SECRET}")


class ServedApp:
    """The real WSGI app on a loopback port (werkzeug server in a thread)."""

    def __init__(self, settings, store):
        self.store = store
        self.server = make_server("127.0.0.1", 0, create_app(settings, store=store), threaded=False)
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks/commercelayer"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def target(settings_factory, tmp_path):
    store = SQLiteStore(str(tmp_path / "target.db"))
    store.migrate()
    app = ServedApp(settings_factory(replay_keys=(REPLAY_KEY,)), store)
    yield app
    app.close()
    store.close()


def record(store, order_id, topic="orders.place", **kw):
    body = order_body(order_id, **kw)
    return store.record_delivery(
        Delivery.from_http(signed_headers(body, topic), body, secrets=SECRETS), now=time.time()
    )


def test_replay_from_store_byte_for_byte_and_with_tokens_runs_again(sqlite_store, target):
    for n in range(3):
        record(sqlite_store, f"oR{n}")
    items = from_store(sqlite_store, DeliveryFilter(limit=100))
    assert [i.order_id for i in items] == ["oR0", "oR1", "oR2"]  # oldest first
    plain = Replayer(target=target.url, secret=SECRET, rate=0)
    s1 = plain.run(items, progress=None)
    assert s1.by_status == {"202": 3}
    stored = {d.order_id: d.body for d in target.store.list_deliveries(DeliveryFilter(with_body=True))}
    assert stored == {i.order_id: i.body for i in items}  # bytes as recorded
    assert plain.run(items, progress=None).by_status == {"200": 3}  # no token: duplicates
    plain.close()
    with_token = Replayer(target=target.url, secret=SECRET, replay_keys=(REPLAY_KEY,), rate=0)
    assert with_token.run(items, progress=None).by_status == {"202": 3}
    with_token.close()
    replays = [d for d in target.store.list_deliveries(DeliveryFilter()) if d.replay_of]
    assert len(replays) == 3 and target.store.queue_stats(now=time.time()).pending == 6


def test_replay_filters_and_dead_letters(sqlite_store):
    record(sqlite_store, "oA", topic="orders.place")
    record(sqlite_store, "oB", topic="orders.approve")
    rec = record(sqlite_store, "oC")
    job = None
    while True:
        j = sqlite_store.claim_job(worker="w", lease_seconds=30, now=time.time())
        if j is None:
            break
        if j.order_id == "oC":
            job = j
            sqlite_store.dead_letter(j.id, worker="w", error="x", decision=None, now=time.time())
        else:
            sqlite_store.retry_job(j.id, worker="w", error="x", next_attempt_at=time.time() + 3600, now=time.time())
    assert job.delivery_id == rec.delivery_id
    assert [i.order_id for i in from_store(sqlite_store, DeliveryFilter(topic="orders.approve"))] == ["oB"]
    assert [i.order_id for i in from_store(sqlite_store, DeliveryFilter(order_id="oA"))] == ["oA"]
    assert [i.order_id for i in from_store(sqlite_store, DeliveryFilter(), dead_only=True)] == ["oC"]


def test_replay_is_rate_limited_and_dry_run_describes(sqlite_store, target):
    for n in range(5):
        record(sqlite_store, f"oT{n}")
    items = from_store(sqlite_store, DeliveryFilter())
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    r = Replayer(target=target.url, secret=SECRET, rate=2, clock=lambda: now[0], sleep=sleep)
    r.run(items, progress=None)
    r.close()
    assert sum(slept) == pytest.approx(2.0)  # 5 requests at 2/s: the last starts 2 s after the first
    lines = list(describe(items, target="http://x", with_token=True))
    assert len(lines) == 5 and "topic=orders.place" in lines[0] and "+replay-token" in lines[0]


def test_replay_from_files(tmp_path):
    f = tmp_path / "orders.approve.one.json"
    f.write_bytes(order_body("oF"))
    g = tmp_path / "exported.json"
    g.write_text(json.dumps({"topic": "orders.place", "body": order_body("oG").decode()}))
    items = from_files([str(f), str(g)])
    assert [(i.topic, i.body) for i in items] == [
        ("orders.approve", f.read_bytes()),
        ("orders.place", order_body("oG")),
    ]
    nameless = tmp_path / "body.json"
    nameless.write_bytes(order_body("oN"))
    with pytest.raises(UsageError, match="no topic"):
        from_files([str(nameless)])
    assert from_files([str(nameless)], topic="orders.pay")[0].topic == "orders.pay"


def test_replay_command_dry_run_prints_and_sends_nothing(tmp_path):
    db = tmp_path / "cli.db"
    store = SQLiteStore(str(db))
    store.migrate()
    record(store, "oD1")
    store.close()
    r = subprocess.run(
        [sys.executable, "-m", "webhook_app", "replay", "--target", "http://127.0.0.1:9/x", "--dry-run"]
        + ["--secret-env", "TARGET_SECRET"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **base_env(),
            "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{db}",
            "TARGET_SECRET": SECRET,
            "WEBHOOK_APP_REPLAY_KEYS": REPLAY_KEY,
        },
    )
    assert r.returncode == 0, r.stderr
    assert "POST http://127.0.0.1:9/x topic=orders.place order=oD1" in r.stdout
    assert SECRET not in r.stdout + r.stderr and REPLAY_KEY not in r.stdout + r.stderr


def test_policy_diff_lists_orders_whose_decision_would_change(sqlite_store, settings_factory):
    record(sqlite_store, "oReg")
    record(sqlite_store, "oApprove", topic="orders.approve")
    record(sqlite_store, "oGuest", guest=True)
    record(sqlite_store, "oBig", total_cents=99_000, source_type="klarna_payments")
    current = load_policy(bundled_policy_path())
    w = Worker(store=sqlite_store, policy=current, settings=settings_factory(), rng=random.Random(0))
    w.drain()
    new = parse_policy(
        tomllib.loads(
            textwrap.dedent("""
        version = 1
        [default]
        action = "skip"
        [[rules]]
        name = "approve-too"
        topics = ["orders.place", "orders.approve"]
        action = "save_payment_source"
        when = { field = "order.total_amount_cents", lt = 50000 }
    """)
        )
    )
    changes = {c.order_id: c for c in diff(sqlite_store, new, current)}
    assert set(changes) == {"oApprove", "oBig"}
    assert changes["oApprove"].before == () and changes["oApprove"].after == ("save_payment_source",)
    assert changes["oBig"].before == ("save_payment_source",) and changes["oBig"].after == ()
    assert changes["oApprove"].line() == "oApprove: skip (-) -> save_payment_source (approve-too)"
    assert diff(sqlite_store, current, current) == []
    # A body forgotten (or past retention) cannot be decided again: counted as skipped, never
    # as "no difference".
    [big] = [d for d in sqlite_store.list_deliveries(DeliveryFilter(limit=100)) if d.order_id == "oBig"]
    assert sqlite_store.remove_bodies([big.id], why="forgotten", now=time.time()) == 1
    skipped: list[str] = []
    assert {c.order_id for c in diff(sqlite_store, new, current, skipped=skipped)} == {"oApprove"}
    assert skipped == ["oBig"]


def sandbox_client(server):
    return CommerceLayerClient(
        api_base=server.api_url, auth_url=server.auth_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    )


def test_reconcile_queues_orders_we_never_heard_of(sqlite_store, settings_factory):
    with running() as server:
        client = sandbox_client(server)
        orders = [o["id"] for o in server.sandbox.state.snapshot()["orders"]]
        record(sqlite_store, orders[0])  # we heard of this one
        result = reconcile(
            client, sqlite_store, load_policy(bundled_policy_path()), since=time.time() - 10 * 365 * 86400, dry_run=True
        )
        assert result.listed == len(orders) and orders[0] not in result.missing
        assert len(result.missing) == len(orders) - 1 and result.queued == []
        assert sqlite_store.queue_stats(now=time.time()).pending == 1
        result = reconcile(
            client, sqlite_store, load_policy(bundled_policy_path()), since=time.time() - 10 * 365 * 86400
        )
        assert len(result.queued) == len(orders) - 1
        listed = server.sandbox.stats.snapshot()["by_route"]["orders.list"]["200"]
        assert listed >= 2  # paginated (page size 25 at most, default 10)
        queued = sqlite_store.list_deliveries(DeliveryFilter(limit=1000))
        assert {d.order_id for d in queued} == set(orders)
        d = next(d for d in queued if d.order_id == orders[1])
        assert d.secret_label == "reconcile" and d.headers["X-Webhook-App-Source"] == "reconcile"
        # the normal pipeline decides them
        outcomes = Worker(
            store=sqlite_store,
            policy=load_policy(bundled_policy_path()),
            settings=settings_factory(),
            rng=random.Random(0),
        ).drain()
        assert len(outcomes) == len(orders) and any(o.outcome == "shadow" for o in outcomes)
        assert (
            reconcile(
                client, sqlite_store, load_policy(bundled_policy_path()), since=time.time() - 10 * 365 * 86400
            ).missing
            == []
        )
        client.close()


def test_parse_since():
    assert parse_since("24h", now=100_000) == 100_000 - 86400
    assert parse_since("30m", now=10_000) == 10_000 - 1800
    assert parse_since("2026-01-01T00:00:00Z", now=0) == 1767225600
    with pytest.raises(ValueError, match="is not a duration"):
        parse_since("yesterday", now=0)


def test_webhooks_register_then_status_and_reset():
    with running() as server:
        client = sandbox_client(server)
        before = {w["id"] for w in status(client)}
        policy = load_policy(bundled_policy_path())
        planned = register(client, policy, callback_url="https://example.test/webhooks/commercelayer")
        # one webhook per topic the policy acts on: Braintree's rule listens to orders.pending
        assert sorted(x.topic for x in planned) == ["orders.pending", "orders.place"]
        assert len({x.created_id for x in planned}) == 2 and all(x.shared_secret for x in planned)
        p = next(x for x in planned if x.topic == "orders.place")
        assert p.created_id and p.shared_secret
        # the guards compare the order's payment source with each wallet entry's: the dotted path
        # is what carries that linkage in a webhook body
        assert p.include_resources == [
            "available_customer_payment_sources",
            "available_customer_payment_sources.payment_source",
            "customer",
            "market",  # wallet activity per market
            "payment_source",
        ]
        with server.sandbox.state.lock:
            assert server.sandbox.state.webhooks[p.created_id].include_resources == p.include_resources
        again = register(client, policy, callback_url="https://example.test/webhooks/commercelayer")
        assert {x.existing_id for x in again} == {x.created_id for x in planned}
        assert all(x.created_id is None for x in again)
        rows = {r["id"]: r for r in status(client)}
        assert set(rows) == before | {x.created_id for x in planned}
        assert rows[p.created_id]["circuit_state"] == "closed"
        with server.sandbox.state.lock:
            hook = server.sandbox.state.webhooks[p.created_id]
            hook.circuit_state, hook.circuit_failure_count = "open", 30
        assert {r["id"]: r for r in status(client)}[p.created_id]["circuit_state"] == "open"
        client.reset_webhook_circuit(p.created_id)
        row = {r["id"]: r for r in status(client)}[p.created_id]
        assert row["circuit_state"] == "closed" and row["circuit_failure_count"] == 0
        client.close()


def test_webhooks_register_command_prints_secrets_to_set():
    with running() as server:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "webhook_app",
                "webhooks",
                "register",
                "--callback-url",
                "https://example.test/hook",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **base_env(),
                "CL_CLIENT_ID": CLIENT_ID,
                "CL_CLIENT_SECRET": CLIENT_SECRET,
                "CL_API_BASE": server.api_url,
                "CL_AUTH_URL": server.auth_url,
            },
        )
        assert r.returncode == 0, r.stderr
        assert "orders.place: created" in r.stdout and "orders.pending: created" in r.stdout, r.stdout
        assert "CL_WEBHOOK_SECRETS=orders-pending:" in r.stdout and ",orders-place:" in r.stdout
        r = subprocess.run(
            [sys.executable, "-m", "webhook_app", "webhooks", "status"],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **base_env(),
                "CL_CLIENT_ID": CLIENT_ID,
                "CL_CLIENT_SECRET": CLIENT_SECRET,
                "CL_API_BASE": server.api_url,
                "CL_AUTH_URL": server.auth_url,
            },
        )
        assert "circuit=closed" in r.stdout and "https://example.test/hook" in r.stdout


def test_replay_never_follows_a_redirect_with_its_headers(sqlite_store, target):
    # A target that answers 307 to elsewhere must not get the signed body and replay token
    # re-sent there by the client.
    seen = []

    def elsewhere(environ, start_response):
        seen.append(environ.get("HTTP_X_COMMERCELAYER_SIGNATURE"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    other = make_server("127.0.0.1", 0, elsewhere)
    threading.Thread(target=other.serve_forever, daemon=True).start()

    def redirect(environ, start_response):
        # read the body first, as a real server does: an unread body makes the answer a reset
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("307 Temporary Redirect", [("Location", f"http://127.0.0.1:{other.server_port}/steal")])
        return [b""]

    hop = make_server("127.0.0.1", 0, redirect)
    threading.Thread(target=hop.serve_forever, daemon=True).start()
    try:
        record(sqlite_store, "oRedir")
        items = from_store(sqlite_store, DeliveryFilter(limit=10))
        r = Replayer(target=f"http://127.0.0.1:{hop.server_port}/x", secret=SECRET, replay_keys=(REPLAY_KEY,), rate=0)
        summary = r.run(items, progress=None)
        r.close()
        assert seen == []
        assert summary.by_status == {"307": 1} and "redirect" in summary.failures[0]
    finally:
        for s in (hop, other):
            s.shutdown()
            s.server_close()


def test_replay_needs_the_targets_secret_given_explicitly(tmp_path):
    db = tmp_path / "cli.db"
    store = SQLiteStore(str(db))
    store.migrate()
    record(store, "oS1")
    store.close()
    env = {
        **base_env(),
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{db}",
        "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
    }
    cmd = [sys.executable, "-m", "webhook_app", "replay", "--target", "http://127.0.0.1:9/x", "--dry-run"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "--secret" in r.stderr  # not the production secret by default
    r = subprocess.run(
        [*cmd, "--secret-env", "TARGET_SECRET"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "TARGET_SECRET": "target-secret-0123456789"},
    )
    assert r.returncode == 0, r.stderr
