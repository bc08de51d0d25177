"""Retention and erasure on real stores (SQLite and PostgreSQL): what is pruned, when, what stays."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from support import SECRET, base_env, signed_headers
from support.builders import order_body

from webhook_app.config import bundled_policy_path
from webhook_app.events import Delivery
from webhook_app.policy import load_policy
from webhook_app.signing import parse_secrets
from webhook_app.store import ClaimHolder, DeliveryFilter, retention
from webhook_app.store.sqlite import SQLiteStore
from webhook_app.web import create_app
from webhook_app.worker import Worker

SECRETS = parse_secrets(f"main:{SECRET}")
DAY = 86400.0


def deliver(store, clock, order_id, topic="orders.place", **kw):
    body = order_body(order_id, **kw)
    return store.record_delivery(Delivery.from_http(signed_headers(body, topic), body, secrets=SECRETS), now=clock())


def worker(store, settings, clock):
    return Worker(
        store=store,
        policy=load_policy(bundled_policy_path()),
        settings=settings,
        clock=clock,
        worker_id="w",
        rng=random.Random(1),
    )


def test_bodies_then_records_are_pruned_and_a_done_action_is_never_forgotten(store, settings_factory, clock):
    settings = settings_factory(retain_bodies_days=7, retain_records_days=30, prune_batch=2)
    old = [deliver(store, clock, f"old{n}") for n in range(5)]
    worker(store, settings, clock).drain()
    clock.advance(8 * DAY)
    fresh = deliver(store, clock, "fresh")
    pending_old = deliver(store, clock, "pend")  # received now: kept whole
    assert retention.prune(store, settings, now=clock(), dry_run=True).bodies == 2  # one batch, counted
    assert all(store.get_delivery(r.delivery_id).body for r in old)
    report = retention.prune_and_record(store, settings, now=clock(), by="test")
    assert report.bodies == 5 and report.deliveries == 0 and report.complete
    for r in old:
        d = store.get_delivery(r.delivery_id)
        assert d.body == b"" and d.headers == {} and d.body_removed == "retention"
        assert d.job["state"] == "done" and d.decisions  # the record of what was decided stays
    assert store.get_delivery(fresh.delivery_id).body and store.get_delivery(pending_old.delivery_id).body
    [op] = store.list_operations(kind="prune")
    assert op.detail["bodies_removed"] == 5
    clock.advance(23 * DAY)
    report = retention.prune(store, settings, now=clock())
    assert report.deliveries == 5
    assert all(store.get_delivery(r.delivery_id) is None for r in old)
    assert store.get_delivery(fresh.delivery_id).body  # its job never ran: kept whole, however old


def test_pruning_never_forgets_that_an_order_was_flagged(store, settings_factory, clock):
    settings = settings_factory(retain_bodies_days=1, retain_records_days=2)
    rec = deliver(store, clock, "o1")
    job = store.claim_job(worker="w", lease_seconds=60, now=clock())
    assert store.begin_action(
        ClaimHolder("o1", worker="w", job_id=job.id, now=clock(), lease_seconds=60), "save_payment_source"
    )
    from webhook_app.store import DecisionRecord

    d = DecisionRecord(rule="r", action="save_payment_source", reason="x", outcome="applied", mode="enforce")
    assert store.finish_job(job.id, worker="w", decision=d, now=clock(), action="save_payment_source")
    clock.advance(3 * DAY)
    assert retention.prune(store, settings, now=clock()).deliveries == 1
    assert store.get_delivery(rec.delivery_id) is None
    assert store.action_state("o1", "save_payment_source") == "done"
    again = deliver(store, clock, "o1")  # Commerce Layer re-sends the same order a year later
    assert not again.duplicate


def test_unfinished_jobs_are_never_pruned(store, settings_factory, clock):
    settings = settings_factory(retain_bodies_days=1, retain_records_days=1)
    rec = deliver(store, clock, "o1")
    clock.advance(400 * DAY)
    report = retention.prune(store, settings, now=clock())
    assert report.bodies == 0 and report.deliveries == 0
    assert store.get_delivery(rec.delivery_id).body


def test_list_queries_do_not_read_bodies(store, clock):
    deliver(store, clock, "o1")
    [row] = store.list_deliveries(DeliveryFilter())
    assert row.body == b""
    [row] = store.list_deliveries(DeliveryFilter(with_body=True))
    assert row.body


def test_sqlite_gives_the_space_back(tmp_path, settings_factory, clock):
    store = SQLiteStore(str(tmp_path / "r.db"))
    store.migrate()
    assert store.auto_vacuum() == "incremental"
    settings = settings_factory(retain_bodies_days=1, retain_records_days=1, prune_batch=100)
    pad = "x" * 30_000
    for n in range(200):
        body = order_body(f"o{n}", metadata={"pad": pad + str(n)})
        d = Delivery.from_http(signed_headers(body, "orders.place"), body, secrets=SECRETS)
        rec = store.record_delivery(d, now=clock())
        job = store.claim_job(worker="w", lease_seconds=60, now=clock())
        store.dead_letter(job.id, worker="w", error="x", decision=None, now=clock())
        assert rec.job_id == job.id
    full = store.storage_stats().bytes
    assert full > 200 * 30_000
    clock.advance(2 * DAY)
    retention.prune(store, settings, now=clock())
    assert store.storage_stats().bytes < full / 4
    store.close()


def test_metrics_show_database_size_and_oldest_delivery(store, settings_factory, clock):
    app = create_app(settings_factory(), store=store, clock=clock)
    deliver(store, clock, "o1")
    clock.advance(100)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    size = [ln for ln in text.splitlines() if ln.startswith("webhook_app_database_bytes ")]
    oldest = [ln for ln in text.splitlines() if ln.startswith("webhook_app_oldest_delivery_age_seconds ")]
    assert size and float(size[0].split()[1]) > 0
    assert oldest and float(oldest[0].split()[1]) == 100.0


def test_db_prune_command(tmp_path):
    db = tmp_path / "cli.db"
    env = {**base_env(), "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{db}"}
    store = SQLiteStore(str(db))
    store.migrate()
    body = json.dumps({"data": {"id": "c1", "type": "customers", "attributes": {"email": "a@b.c"}}}).encode()
    store.record_delivery(
        Delivery.from_http(signed_headers(body, "customers.create"), body, secrets=SECRETS), now=1_000_000.0
    )
    store.close()
    run = [sys.executable, "-m", "webhook_app", "db", "prune"]
    r = subprocess.run([*run, "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "would remove 1 bodies and 1 deliveries" in r.stdout, r.stderr
    r = subprocess.run([*run, "--vacuum"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "removed 1 bodies and 1 deliveries" in r.stdout, r.stderr
    store = SQLiteStore(str(db))
    assert store.list_deliveries(DeliveryFilter()) == []
    assert store.list_operations(kind="prune")[0].detail["by"] == "db prune"
    store.close()


def test_forget_removes_one_customers_bodies_and_says_how_many(tmp_path):
    db = tmp_path / "forget.db"
    store = SQLiteStore(str(db))
    store.migrate()
    t = 1_800_000_000.0
    mine = [deliver(store, lambda: t, f"o{n}", customer_id="cusMINE01") for n in range(3)]
    other = deliver(store, lambda: t, "o9", customer_id="cusOTHER1")
    body = json.dumps({"data": {"id": "cusMINE01", "type": "customers", "attributes": {"email": "x@y.z"}}}).encode()
    cust = store.record_delivery(
        Delivery.from_http(signed_headers(body, "customers.create"), body, secrets=SECRETS), now=t
    )
    store.close()
    env = {**base_env(), "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{db}"}
    run = [sys.executable, "-m", "webhook_app", "forget"]
    r = subprocess.run([*run, "--customer", "cusMINE01"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "of 4 deliveries" in r.stdout, r.stderr
    r = subprocess.run([*run, "--email", "CUSOTHER1@example.com"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "of 1 deliveries" in r.stdout, r.stderr
    r = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    store = SQLiteStore(str(db))
    for rec in (*mine, cust, other):
        d = store.get_delivery(rec.delivery_id)
        assert d.body == b"" and d.headers == {} and d.body_removed == "forgotten"
        assert d.order_id or d.resource_type == "customers"  # the metadata stays
    ops = store.list_operations(kind="forget")
    assert [o.detail["removed"] for o in ops] == [1, 4]
    assert "example.com" not in json.dumps([o.detail for o in ops])
    store.close()


def test_forget_by_email_reads_the_raw_body_not_only_the_parsed_one(store):
    """A JSON parser keeps the last of two equal keys, so `{"customer_email": "victim@...",
    "customer_email": "other@..."}` parses as the other address while the stored bytes name the
    victim: erasure matches the address in every string of the raw body, case-insensitively and
    however it is escaped (\\u0040, \\/), and not inside a longer address."""
    from webhook_app.ops.privacy import forget_customer

    def stored(attributes_json: str, oid: str) -> int:
        head = '{"data":{"type":"orders","id":"' + oid + '","attributes":'
        body = (head + attributes_json + ',"relationships":{}},"included":[]}').encode()
        return store.record_delivery(
            Delivery.from_http(signed_headers(body, "orders.place"), body, secrets=SECRETS), now=1_800_000_000.0
        ).delivery_id

    naming = [
        stored('{"customer_email":"victim@example.com","customer_email":"other@example.com"}', "oDup"),
        stored('{"customer_email":"other@example.com","customer_email":"victim@example.com"}', "oLast"),
        stored('{"customer_email":"Victim\\u0040Example.COM"}', "oEsc"),
        stored('{"customer_email":"other@example.com","notes":"was victim@example.com."}', "oNote"),
        stored('{"meta":{"billing":{"email":"VICTIM@EXAMPLE.COM"}}}', "oDeep"),
    ]
    kept = [
        stored('{"customer_email":"notvictim@example.com"}', "oPre"),
        stored('{"customer_email":"victim@example.com.au"}', "oSuf"),
        stored('{"customer_email":"victim@example.community"}', "oLong"),
    ]
    result = forget_customer(store, email=" Victim@Example.com ", now=1_800_000_100.0)
    assert result.removed == len(naming)
    assert all(store.get_delivery(i).body_removed == "forgotten" for i in naming)
    assert all(store.get_delivery(i).body_removed is None for i in kept)


def test_the_admin_views_say_a_body_was_removed(settings_factory, sqlite_store, clock):
    from webhook_app.tokens import ADMIN, Tokens

    key = "admin-key-0123456789abcdef"
    app = create_app(settings_factory(admin_keys=(key,)), store=sqlite_store, clock=clock)
    rec = deliver(sqlite_store, clock, "o1")
    sqlite_store.remove_bodies([rec.delivery_id], why="forgotten", now=clock())
    tok = Tokens(ADMIN, (key,), clock).make(ttl=60)
    client = app.test_client()
    r = client.get(f"/admin/deliveries/{rec.delivery_id}", headers={"Authorization": f"Bearer {tok}"})
    assert r.json["body_removed"] == "forgotten" and r.json["body"] == ""
    client.set_cookie("webhook_app_admin", tok, path="/admin")
    page = client.get(f"/admin/view/deliveries/{rec.delivery_id}").get_data(as_text=True)
    assert "were removed (forgotten)" in page


def test_configured_fields_are_redacted_once_settled_and_past_the_window(store, settings_factory, clock):
    settings = settings_factory(redact_fields=("email", "customer_email"), redact_after_days=2)
    settled = deliver(store, clock, "o1", customer_id="cusRED001")
    worker(store, settings, clock).drain()
    pending = deliver(store, clock, "o2", customer_id="cusRED002")
    clock.advance(1 * DAY)
    retention.prune(store, settings, now=clock())
    assert b"cusRED001@example.com" in store.get_delivery(settled.delivery_id).body  # window not over
    clock.advance(2 * DAY)
    retention.prune(store, settings, now=clock())
    doc = json.loads(store.get_delivery(settled.delivery_id).body)
    [cust] = [r for r in doc["included"] if r["type"] == "customers"]
    assert cust["attributes"]["email"] == "[redacted]" and cust["id"] == "cusRED001"
    assert doc["data"]["id"] == "o1"  # the rest stays
    assert b"cusRED002@example.com" in store.get_delivery(pending.delivery_id).body  # its job never ran
