"""The admin API, the admin page and `webhook-app admin-token`, through the real WSGI app.

The API contract runs on both store backends (`store`, from `store_factory`); the page runs on a
real SQLite file. Tokens are made and checked with the test's clock, so expiry is exact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from support import OTHER_SECRET, SECRET, signed_headers
from support.builders import order_body

from webhook_app.cli.admin import parse_ttl
from webhook_app.events import Delivery
from webhook_app.signing import WebhookSecret
from webhook_app.store import DecisionRecord, DeliveryFilter
from webhook_app.tokens import ADMIN, REPLAY, REPLAY_HEADER, Tokens, make_replay_token
from webhook_app.web import create_app

ADMIN_KEY = "admin-key-new-0123456789abcdef"
OLD_ADMIN_KEY = "admin-key-old-0123456789abcdef"
REPLAY_KEY = "replay-key-0123456789abcdef"
CLIENT_SECRET = "cl-client-secret-0123456789abcdef"
SECRETS = (WebhookSecret("main", SECRET.encode()),)
COOKIE = "webhook_app_admin"
EVERY_SECRET = (SECRET, OTHER_SECRET, ADMIN_KEY, OLD_ADMIN_KEY, REPLAY_KEY, CLIENT_SECRET)


# --- helpers -------------------------------------------------------------------------------------


def make_client(settings_factory, store, clock, *, keys=(ADMIN_KEY,)):
    settings = settings_factory(admin_keys=keys, replay_keys=(REPLAY_KEY,), cl_client_secret=CLIENT_SECRET)
    return create_app(settings, store=store, clock=clock).test_client()


def token(clock, *, keys=(ADMIN_KEY,), ttl=3600):
    return Tokens(ADMIN, keys, clock).make(ttl=ttl)


def auth(tok):
    return {"Authorization": f"Bearer {tok}"}


def record(store, order_id, *, now, topic="orders.place", extra_headers=None, **doc):
    body = order_body(order_id, **doc)
    d = Delivery.from_http(signed_headers(body, topic), body, secrets=SECRETS)
    if extra_headers:
        d = dataclasses.replace(d, headers={**d.headers, **extra_headers})
    return store.record_delivery(d, now=now)


def record_other(store, *, now):
    body = json.dumps({"data": {"id": "cus1", "type": "customers"}}).encode()
    d = Delivery.from_http(signed_headers(body, "customers.create"), body, secrets=SECRETS)
    return store.record_delivery(d, now=now)


def claim(store, job_id, now):
    job = store.claim_job(worker="w1", lease_seconds=60, now=now)
    assert job is not None and job.id == job_id
    return job


def make_dead(store, job_id, now, error="Commerce Layer said 422: invalid payment source"):
    claim(store, job_id, now)
    assert store.dead_letter(job_id, worker="w1", error=error, decision=None, now=now)


def make_done(store, job_id, now, rule="registered-card", action="flag", outcome="shadow"):
    claim(store, job_id, now)
    decision = DecisionRecord(
        rule=rule, action=action, reason="customer has a password", outcome=outcome, mode="shadow"
    )
    assert store.finish_job(job_id, worker="w1", decision=decision, now=now)


def iso(t):
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def csrf_of(html):
    m = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def assert_no_secrets(text, *extra):
    for s in (*EVERY_SECRET, *extra):
        assert s not in text


@pytest.fixture
def api(settings_factory, store, clock):
    """(client, store, a valid admin token) on each backend."""
    return make_client(settings_factory, store, clock), store, token(clock)


@pytest.fixture
def site(settings_factory, sqlite_store, clock):
    """(client, store) for the page, on SQLite."""
    return make_client(settings_factory, sqlite_store, clock), sqlite_store


def login(client, clock):
    r = client.post("/admin/login", data={"token": token(clock)})
    assert r.status_code == 303
    return r


# --- disabled without keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/deliveries"),
        ("GET", "/admin/deliveries/1"),
        ("POST", "/admin/deliveries/1/replay"),
        ("POST", "/admin/dead-letters/1/requeue"),
        ("GET", "/admin/stats"),
        ("GET", "/admin/operations"),
        ("GET", "/admin/"),
        ("POST", "/admin/login"),
        ("GET", "/admin/view/deliveries/1"),
    ],
)
def test_everything_is_404_without_admin_keys(settings_factory, sqlite_store, clock, method, path):
    client = make_client(settings_factory, sqlite_store, clock, keys=())
    r = client.open(path, method=method, headers=auth(token(clock)), data={"token": token(clock)})
    assert r.status_code == 404
    assert "WEBHOOK_APP_ADMIN_KEYS" in r.get_data(as_text=True)


# --- authentication ------------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/admin/deliveries"),
    ("GET", "/admin/deliveries/1"),
    ("POST", "/admin/deliveries/1/replay"),
    ("POST", "/admin/dead-letters/1/requeue"),
    ("GET", "/admin/stats"),
    ("GET", "/admin/operations"),
]


def bad_tokens(clock):
    expired = token(clock, ttl=60)
    clock.advance(61)
    return {
        "missing": {},
        "empty bearer": {"Authorization": "Bearer "},
        "not bearer": {"Authorization": f"Basic {token(clock)}"},
        "garbage": auth("not-a-token"),
        "expired": auth(expired),
        "forged": auth(Tokens(ADMIN, ("attacker-key-0123456789abcdef",), clock).make(ttl=3600)),
        "replay token": auth(
            make_replay_token(Tokens(REPLAY, (ADMIN_KEY,), clock), b"{}", topic="orders.place", ttl=3600)
        ),
        "replay key": auth(Tokens(ADMIN, (REPLAY_KEY,), clock).make(ttl=3600)),
        "tampered": auth(token(clock)[:-2] + "xx"),
    }


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_refuses_bad_tokens_with_401(settings_factory, sqlite_store, clock, method, path):
    client = make_client(settings_factory, sqlite_store, clock)
    record(sqlite_store, "o1", now=clock())
    for why, headers in bad_tokens(clock).items():
        r = client.open(path, method=method, headers=headers)
        assert r.status_code == 401, why
        err = r.json["errors"][0]
        assert err["status"] == "401" and err["title"] == "Unauthorized" and err["detail"], why
        assert r.headers["WWW-Authenticate"].startswith('Bearer realm="webhook-app admin"'), why
        assert_no_secrets(r.get_data(as_text=True))
    # nothing was changed by the refused POSTs
    assert len(sqlite_store.list_deliveries(DeliveryFilter())) == 1


def test_401_details_say_what_is_wrong(settings_factory, sqlite_store, clock):
    client = make_client(settings_factory, sqlite_store, clock)
    tokens = bad_tokens(clock)

    def detail(name):
        r = client.get("/admin/stats", headers=tokens[name])
        return r.json["errors"][0]["detail"]

    assert "missing admin token" in detail("missing")
    assert "expired" in detail("expired")
    assert "invalid" in detail("forged")
    assert "invalid" in detail("replay token")  # another purpose's salt: the signature does not match
    assert "Bearer" in detail("not bearer")


def test_the_cookie_does_not_authenticate_the_api(site, clock):
    client, _ = site
    login(client, clock)
    assert (
        client.get(
            "/admin/",
        ).status_code
        == 200
    )
    assert client.get("/admin/stats").status_code == 401


def test_key_rotation_accepts_old_tokens_while_the_old_key_is_listed(settings_factory, sqlite_store, clock):
    old_tok = token(clock, keys=(OLD_ADMIN_KEY,))
    rotated = make_client(settings_factory, sqlite_store, clock, keys=(OLD_ADMIN_KEY, ADMIN_KEY))
    assert rotated.get("/admin/stats", headers=auth(old_tok)).status_code == 200
    new_tok = token(clock, keys=(OLD_ADMIN_KEY, ADMIN_KEY))  # signed with the newest
    assert rotated.get("/admin/stats", headers=auth(new_tok)).status_code == 200
    retired = make_client(settings_factory, sqlite_store, clock, keys=(ADMIN_KEY,))
    assert retired.get("/admin/stats", headers=auth(new_tok)).status_code == 200
    assert retired.get("/admin/stats", headers=auth(old_tok)).status_code == 401


# --- GET /admin/deliveries -----------------------------------------------------------------------


def test_list_shows_deliveries_newest_first_with_job_and_latest_decision(api, clock):
    client, store, tok = api
    t0 = clock()
    a = record(store, "ordA", now=t0)
    b = record(store, "ordB", now=t0 + 1)
    c = record_other(store, now=t0 + 2)
    make_done(store, a.job_id, t0 + 3)
    r = client.get("/admin/deliveries", headers=auth(tok))
    assert r.status_code == 200 and r.json["next_before_id"] is None
    rows = r.json["deliveries"]
    assert [x["id"] for x in rows] == [c.delivery_id, b.delivery_id, a.delivery_id]
    first = rows[2]
    assert first["topic"] == "orders.place" and first["order_id"] == "ordA"
    assert first["received_at"] == iso(t0) and first["status"] == "queued" and first["replay_of"] is None
    assert first["job"]["id"] == a.job_id and first["job"]["state"] == "done" and first["job"]["attempts"] == 1
    assert first["job"]["last_error"] is None
    assert first["decision"]["rule"] == "registered-card" and first["decision"]["action"] == "flag"
    assert first["decision"]["outcome"] == "shadow"
    assert rows[1]["job"]["state"] == "pending" and rows[1]["decision"] is None
    assert rows[0]["status"] == "ignored" and rows[0]["job"] is None and rows[0]["order_id"] is None
    assert "body" not in first and "headers" not in first
    by_decision = client.get("/admin/deliveries", query_string={"decision": "flag"}, headers=auth(tok))
    assert [x["id"] for x in by_decision.json["deliveries"]] == [a.delivery_id]


def test_list_filters(api, clock):
    client, store, tok = api
    t0 = clock()
    a = record(store, "ordA", now=t0)
    b = record(store, "ordB", now=t0 + 100)
    c = record(store, "ordA", topic="orders.approve", status="approved", now=t0 + 200)
    o = record_other(store, now=t0 + 300)
    make_dead(store, a.job_id, t0 + 400)

    def ids(**params):
        r = client.get("/admin/deliveries", query_string=params, headers=auth(tok))
        assert r.status_code == 200, r.json
        return [x["id"] for x in r.json["deliveries"]]

    assert ids(topic="orders.place") == [b.delivery_id, a.delivery_id]
    assert ids(order_id="ordA") == [c.delivery_id, a.delivery_id]
    assert ids(order_id="ordA", topic="orders.approve") == [c.delivery_id]
    assert ids(status="dead") == [a.delivery_id]
    assert ids(status="pending") == [c.delivery_id, b.delivery_id]
    assert ids(status="ignored") == [o.delivery_id]
    assert ids(status="queued") == [c.delivery_id, b.delivery_id, a.delivery_id]
    assert ids(status="done") == [] and ids(status="running") == []
    assert ids(since=str(int(t0 + 100))) == [o.delivery_id, c.delivery_id, b.delivery_id]
    assert ids(since=iso(t0 + 200)) == [o.delivery_id, c.delivery_id]
    assert ids(since=iso(t0 + 200).replace("Z", "+00:00")) == [o.delivery_id, c.delivery_id]
    assert ids(since=iso(t0 + 200)[:19]) == [o.delivery_id, c.delivery_id]  # naive is UTC
    assert ids(since=str(t0 + 100), until=str(t0 + 300)) == [c.delivery_id, b.delivery_id]
    assert ids(topic="orders.place", limit="1") == [b.delivery_id]


def test_list_pages_with_before_id(api, clock):
    client, store, tok = api
    made = [record(store, f"ord{n}", now=clock() + n).delivery_id for n in range(7)]
    seen, before, pages = [], None, 0
    while True:
        params = {"limit": "3", **({"before_id": str(before)} if before else {})}
        r = client.get("/admin/deliveries", query_string=params, headers=auth(tok))
        assert r.status_code == 200
        seen += [x["id"] for x in r.json["deliveries"]]
        pages += 1
        before = r.json["next_before_id"]
        if before is None:
            break
    assert seen == sorted(made, reverse=True) and pages == 3


def test_list_limit_defaults_to_50(api, clock):
    client, store, tok = api
    for n in range(52):
        record(store, f"ord{n}", now=clock() + n)
    r = client.get("/admin/deliveries", headers=auth(tok))
    assert len(r.json["deliveries"]) == 50 and r.json["next_before_id"] == r.json["deliveries"][-1]["id"]
    r = client.get("/admin/deliveries", query_string={"limit": "500"}, headers=auth(tok))
    assert len(r.json["deliveries"]) == 52 and r.json["next_before_id"] is None


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"status": "lost"}, "status must be one of queued, ignored, pending, running, done, dead"),
        ({"limit": "0"}, "limit must be a whole number from 1 to 500"),
        ({"limit": "501"}, "limit must be a whole number from 1 to 500"),
        ({"limit": "ten"}, "limit must be"),
        ({"before_id": "-3"}, "before_id must be a whole number"),
        ({"before_id": "99999999999999999999"}, "before_id must be a whole number"),
        ({"since": "yesterday"}, "since must be ISO 8601"),
        ({"until": "2026-13-45"}, "until must be ISO 8601"),
        ({"topic": "<script>"}, "topic must look like orders.place"),
        ({"order_id": "x" * 129}, "order_id is longer than 128"),
        ({"orderid": "ordA"}, "unknown query parameter 'orderid'"),
        ([("status", "dead"), ("status", "done")], "status may be given once"),
    ],
)
def test_bad_query_values_are_400(settings_factory, sqlite_store, clock, params, words):
    client = make_client(settings_factory, sqlite_store, clock)
    r = client.get("/admin/deliveries", query_string=params, headers=auth(token(clock)))
    assert r.status_code == 400
    err = r.json["errors"][0]
    assert err["status"] == "400" and err["title"] == "Invalid query" and words in err["detail"]
    assert "<script>" not in err["detail"]


# --- GET /admin/deliveries/<id> --------------------------------------------------------------------


def test_detail_has_headers_body_decisions_and_attempts(api, clock):
    client, store, tok = api
    rec = record(store, "ordA", now=clock())
    make_done(store, rec.job_id, clock() + 5)
    r = client.get(f"/admin/deliveries/{rec.delivery_id}", headers=auth(tok))
    assert r.status_code == 200
    d = r.json
    assert d["id"] == rec.delivery_id and d["order_id"] == "ordA" and d["topic"] == "orders.place"
    assert d["body"] == order_body("ordA").decode() and json.loads(d["body"])["data"]["id"] == "ordA"
    assert d["headers"]["X-CommerceLayer-Topic"] == "orders.place" and "X-CommerceLayer-Signature" in d["headers"]
    assert d["signed_with"] == "main"
    [dec] = d["decisions"]
    assert dec["rule"] == "registered-card" and dec["outcome"] == "shadow" and dec["decided_at"] == iso(clock() + 5)
    [att] = d["attempts"]
    assert att["number"] == 1 and att["worker"] == "w1" and att["outcome"] == "shadow"
    assert att["started_at"] == iso(clock() + 5)


def test_detail_never_shows_credential_headers(api, clock):
    client, store, tok = api
    leaked = {
        "Authorization": "Bearer leaked-bearer-0123",
        "Cookie": "webhook_app_admin=leaked-cookie-0123",
        REPLAY_HEADER: "leaked-replay-token-0123",
    }
    rec = record(store, "ordA", now=clock(), extra_headers=leaked)
    r = client.get(f"/admin/deliveries/{rec.delivery_id}", headers=auth(tok))
    text = r.get_data(as_text=True)
    assert r.status_code == 200 and "X-CommerceLayer-Topic" in r.json["headers"]
    for name, value in leaked.items():
        assert name not in r.json["headers"] and value not in text


def test_detail_404(api):
    client, _, tok = api
    for path in ("/admin/deliveries/4242", "/admin/deliveries/99999999999999999999999"):
        r = client.get(path, headers=auth(tok))
        assert r.status_code == 404 and r.json["errors"][0]["title"] == "Not found"


# --- POST replay and requeue -----------------------------------------------------------------------


def test_replay_creates_a_new_queued_delivery_marked_replay_of(api, clock):
    client, store, tok = api
    rec = record(store, "ordA", now=clock())
    make_done(store, rec.job_id, clock())
    clock.advance(60)
    r = client.post(f"/admin/deliveries/{rec.delivery_id}/replay", headers=auth(tok))
    assert r.status_code == 202
    assert r.json["status"] == "accepted" and r.json["replay_of"] == rec.delivery_id
    new = store.get_delivery(r.json["delivery_id"])
    assert new.id != rec.delivery_id and new.replay_of == rec.delivery_id and new.body == order_body("ordA")
    assert new.job["state"] == "pending" and new.job["id"] == r.json["job_id"] and new.received_at == clock()
    # a replay of the replay points at the original, and is again a new delivery
    again = client.post(f"/admin/deliveries/{new.id}/replay", headers=auth(tok))
    assert again.status_code == 202 and again.json["replay_of"] == rec.delivery_id
    assert again.json["delivery_id"] not in (rec.delivery_id, new.id)
    listed = client.get("/admin/deliveries", headers=auth(tok)).json["deliveries"]
    assert [x["replay_of"] for x in listed] == [rec.delivery_id, rec.delivery_id, None]


def test_replay_unknown_is_404(api):
    client, store, tok = api
    assert client.post("/admin/deliveries/4242/replay", headers=auth(tok)).status_code == 404
    assert store.list_deliveries(DeliveryFilter()) == []


def test_requeue_dead_letter_then_409_then_404(api, clock):
    client, store, tok = api
    rec = record(store, "ordA", now=clock())
    make_dead(store, rec.job_id, clock())
    assert store.queue_stats(now=clock()).dead == 1
    clock.advance(30)
    r = client.post(f"/admin/dead-letters/{rec.job_id}/requeue", headers=auth(tok))
    assert r.status_code == 202 and r.json == {"status": "requeued", "job_id": rec.job_id, "state": "pending"}
    job = store.get_delivery(rec.delivery_id).job
    assert job["state"] == "pending" and job["attempts"] == 0
    assert store.queue_stats(now=clock()).dead == 0
    again = client.post(f"/admin/dead-letters/{rec.job_id}/requeue", headers=auth(tok))
    assert again.status_code == 409 and "pending" in again.json["errors"][0]["detail"]
    make_done(store, rec.job_id, clock())
    done = client.post(f"/admin/dead-letters/{rec.job_id}/requeue", headers=auth(tok))
    assert done.status_code == 409 and "done" in done.json["errors"][0]["detail"]
    for unknown in (rec.job_id + 1000, 99999999999999999999999):
        r = client.post(f"/admin/dead-letters/{unknown}/requeue", headers=auth(tok))
        assert r.status_code == 404 and "no dead letter" in r.json["errors"][0]["detail"]


def requeued_then_done(client, store, tok, clock):
    """A job dead-lettered on a refused token, requeued through the API, then done."""
    rec = record(store, "ordRQ1", now=clock())
    first = claim(store, rec.job_id, clock())
    store.record_attempt_traces(first.id, first.number, trace_id=None, cl_trace_ids=["cl-trace-first"])
    assert store.dead_letter(
        first.id, worker="w1", error="permanent error: token request: HTTP 401", decision=None, now=clock()
    )
    clock.advance(60)
    assert client.post(f"/admin/dead-letters/{rec.job_id}/requeue", headers=auth(tok)).status_code == 202
    again = claim(store, rec.job_id, clock())
    store.record_attempt_traces(again.id, again.number, trace_id=None, cl_trace_ids=["cl-trace-second"])
    decision = DecisionRecord(rule="r", action="save_payment_source", reason="ok", outcome="applied", mode="enforce")
    assert store.finish_job(again.id, worker="w1", decision=decision, now=clock())
    return rec


def test_a_requeued_job_keeps_its_history_and_shows_its_current_state(api, clock):
    client, store, tok = api
    rec = requeued_then_done(client, store, tok, clock)
    d = client.get(f"/admin/deliveries/{rec.delivery_id}", headers=auth(tok)).json
    attempts = [(a["number"], a["outcome"], a["error"], a["commercelayer_trace_ids"]) for a in d["attempts"]]
    assert attempts == [
        (1, "dead", "permanent error: token request: HTTP 401", ["cl-trace-first"]),
        (2, "applied", None, ["cl-trace-second"]),
    ]
    assert d["state"] == "done" and d["job"]["state"] == "done"
    assert d["job"]["last_error"] is None  # the 401 is attempt 1's, not the job's current error
    listed = client.get("/admin/deliveries", headers=auth(tok)).json["deliveries"][0]
    assert listed["id"] == rec.delivery_id and listed["state"] == "done"


def test_the_page_of_a_requeued_job_shows_done_and_each_attempt_once(settings_factory, sqlite_store, clock):
    client = make_client(settings_factory, sqlite_store, clock)
    rec = requeued_then_done(client, sqlite_store, token(clock), clock)
    login(client, clock)
    html = client.get(f"/admin/view/deliveries/{rec.delivery_id}").get_data(as_text=True)
    facts = re.search(r'<dl class="facts" id="facts">(.*?)</dl>', html, re.S).group(1)
    assert "<dt>Status</dt><dd>done</dd>" in facts and "queued" not in facts
    assert "Last error" not in facts and "HTTP 401" not in facts
    rows = re.findall(r'<tr><td class="num">(\d+)</td>', html.split('id="attempts"')[1])
    assert rows == ["1", "2"]
    assert html.count("cl-trace-first") == 1 and html.count("cl-trace-second") == 1


def test_get_on_post_endpoints_is_405(api):
    client, _, tok = api
    assert client.get("/admin/dead-letters/1/requeue", headers=auth(tok)).status_code == 405
    assert client.get("/admin/deliveries/1/replay", headers=auth(tok)).status_code == 405


# --- GET /admin/stats ------------------------------------------------------------------------------


def test_stats(api, clock):
    client, store, tok = api
    t0 = clock()
    recs = [record(store, f"ord{n}", now=t0 + n) for n in range(5)]
    make_done(store, recs[0].job_id, t0 + 10, rule="registered-card", action="flag", outcome="shadow")
    make_done(store, recs[1].job_id, t0 + 10, rule="guest", action="skip", outcome="skipped")
    make_dead(store, recs[2].job_id, t0 + 10)
    claim(store, recs[3].job_id, t0 + 10)  # running
    clock.advance(100)
    r = client.get("/admin/stats", headers=auth(tok))
    assert r.status_code == 200
    q = r.json["queue"]
    assert (q["pending"], q["running"], q["dead"], q["done"]) == (1, 1, 1, 2)
    assert q["oldest_pending_age_seconds"] == pytest.approx(100 - 3)  # the running job counts as waiting
    assert r.json["decisions"] == [
        {"rule": "guest", "action": "skip", "outcome": "skipped", "count": 1},
        {"rule": "registered-card", "action": "flag", "outcome": "shadow", "count": 1},
    ]
    assert r.json["decisions_by_rule"] == {"guest": 1, "registered-card": 1}
    assert r.json["decisions_by_action"] == {"skip": 1, "flag": 1}
    assert r.json["decisions_by_outcome"] == {"skipped": 1, "shadow": 1}


# --- the page --------------------------------------------------------------------------------------


def fill(store, clock):
    """Three order deliveries (one done with a decision, one dead, one pending) and a customer event."""
    t0 = clock()
    done = record(store, "ordDONE01", now=t0)
    dead = record(store, "ordDEAD01", now=t0 + 1)
    pending = record(store, "ordPEND01", now=t0 + 2)
    other = record_other(store, now=t0 + 3)
    make_done(store, done.job_id, t0 + 4)
    make_dead(store, dead.job_id, t0 + 5)
    clock.advance(10)
    return done, dead, pending, other


def test_login_form_then_cookie_then_overview(site, clock):
    client, store = site
    done, dead, pending, _ = fill(store, clock)
    r = client.get("/admin/")
    assert r.status_code == 200 and 'name="token"' in r.get_data(as_text=True)
    assert "ordDONE01" not in r.get_data(as_text=True)
    tok = token(clock)
    r = client.post("/admin/login", data={"token": tok})
    assert r.status_code == 303 and r.headers["Location"].endswith("/admin/")
    [cookie] = r.headers.getlist("Set-Cookie")
    assert cookie.startswith(f"{COOKIE}={tok};")
    parts = {p.strip().split("=")[0].lower() for p in cookie.split(";")}
    assert {"httponly", "samesite", "path"} <= parts and "secure" not in parts
    assert "SameSite=Strict" in cookie and "Path=/admin" in cookie
    page = client.get("/admin/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    for text in (
        "ordDONE01",
        "ordDEAD01",
        "ordPEND01",
        "customers.create",
        "registered-card",
        "flag",
        "shadow",
        "Requeue",
        "Log out",
        "invalid payment source",
    ):
        assert text in html, text
    assert f'href="/admin/view/deliveries/{done.delivery_id}"' in html
    assert f'action="/admin/view/dead-letters/{dead.job_id}/requeue"' in html
    assert re.search(r'id="q-pending">1<', html) and re.search(r'id="q-dead">1<', html)
    assert 'id="q-age">8s<' in html  # ordPEND01 was received 8 s ago
    assert tok not in html
    assert page.headers["Cache-Control"] == "no-store"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY"


def test_cookie_is_secure_over_https(site, clock):
    client, _ = site
    r = client.post("/admin/login", data={"token": token(clock)}, base_url="https://admin.example")
    assert "; Secure" in r.headers["Set-Cookie"]


@pytest.mark.parametrize("why", ["garbage", "expired", "replay token", "forged"])
def test_login_refuses_bad_tokens(site, clock, why):
    client, _ = site
    tok = bad_tokens(clock)[why]["Authorization"].removeprefix("Bearer ")
    r = client.post("/admin/login", data={"token": tok})
    assert r.status_code == 401 and "Set-Cookie" not in r.headers
    assert "That token was refused" in r.get_data(as_text=True) and tok not in r.get_data(as_text=True)


def test_expired_cookie_shows_the_login_form_and_clears_the_cookie(site, clock):
    client, store = site
    fill(store, clock)
    client.post("/admin/login", data={"token": token(clock, ttl=60)})
    assert "ordDONE01" in client.get("/admin/").get_data(as_text=True)
    clock.advance(61)
    r = client.get("/admin/")
    assert r.status_code == 401 and "ordDONE01" not in r.get_data(as_text=True)
    assert "expired" in r.get_data(as_text=True) and 'name="token"' in r.get_data(as_text=True)
    assert client.get_cookie(COOKIE, path="/admin") is None
    assert client.get("/admin/view/deliveries/1").status_code == 401


def test_page_filters_and_bad_filter(site, clock):
    client, store = site
    fill(store, clock)
    login(client, clock)
    html = client.get("/admin/?status=dead").get_data(as_text=True)
    table = html.split('id="deliveries"')[1]
    assert "ordDEAD01" in table and "ordDONE01" not in table
    r = client.get("/admin/?status=lost")
    assert r.status_code == 400 and "status must be one of" in r.get_data(as_text=True)


def test_page_older_link_pages(site, clock):
    client, store = site
    for n in range(53):
        record(store, f"ord{n:03d}", now=clock() + n)
    login(client, clock)
    html = client.get("/admin/").get_data(as_text=True)
    assert "ord052" in html and "ord002" not in html
    older = re.search(r'id="older" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    html = client.get(older).get_data(as_text=True)
    assert "ord002" in html and "ord052" not in html and 'id="older"' not in html


def test_detail_page_then_replay(site, clock):
    client, store = site
    done, *_ = fill(store, clock)
    login(client, clock)
    r = client.get(f"/admin/view/deliveries/{done.delivery_id}")
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    for text in (
        "ordDONE01",
        "X-CommerceLayer-Topic",
        "registered-card",
        "customer has a password",
        "w1",
        "Replay",
        "&#34;total_amount_cents&#34;: 12000",
    ):
        assert text in html, text
    assert "\n  &#34;data&#34;: {\n" in html  # the body is pretty-printed
    r = client.post(f"/admin/view/deliveries/{done.delivery_id}/replay", data={"csrf_token": csrf_of(html)})
    assert r.status_code == 303
    new_id = int(re.search(r"/admin/view/deliveries/(\d+)\?notice=replayed", r.headers["Location"]).group(1))
    assert store.get_delivery(new_id).replay_of == done.delivery_id
    html = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "Replay queued" in html and f"delivery {done.delivery_id}</a>" in html
    assert client.get("/admin/view/deliveries/4242").status_code == 404


def test_requeue_button(site, clock):
    client, store = site
    _, dead, *_ = fill(store, clock)
    login(client, clock)
    html = client.get("/admin/").get_data(as_text=True)
    assert f'id="dead-{dead.job_id}"' in html
    r = client.post(f"/admin/view/dead-letters/{dead.job_id}/requeue", data={"csrf_token": csrf_of(html)})
    assert r.status_code == 303
    assert store.get_delivery(dead.delivery_id).job["state"] == "pending"
    html = client.get(r.headers["Location"]).get_data(as_text=True)
    assert f"Job {dead.job_id} was requeued" in html and f'id="dead-{dead.job_id}"' not in html
    assert "No dead letters." in html
    r = client.post(f"/admin/view/dead-letters/{dead.job_id}/requeue", data={"csrf_token": csrf_of(html)})
    assert "is not a dead letter any more" in client.get(r.headers["Location"]).get_data(as_text=True)


def test_forms_without_the_right_csrf_token_are_refused(site, clock):
    client, store = site
    done, dead, *_ = fill(store, clock)
    login(client, clock)
    other_session = Tokens(ADMIN, (ADMIN_KEY,), clock).make(ttl=3600, n="other")
    from webhook_app.web.admin_page import csrf_token

    for data in (
        {},
        {"csrf_token": ""},
        {"csrf_token": "0" * 64},
        {"csrf_token": csrf_token(other_session, ADMIN_KEY)},  # another session's
        {"csrf_token": csrf_token(token(clock), REPLAY_KEY)},  # under another key
        {"csrf_token": "é" * 64},  # not ASCII: compare_digest raised TypeError on str, a 500 and a traceback
    ):
        for path in (
            f"/admin/view/dead-letters/{dead.job_id}/requeue",
            f"/admin/view/deliveries/{done.delivery_id}/replay",
            "/admin/logout",
        ):
            r = client.post(path, data=data)
            assert r.status_code == 403, (path, data)
            assert "CSRF" in r.get_data(as_text=True)
    assert store.get_delivery(dead.delivery_id).job["state"] == "dead"
    assert len(store.list_deliveries(DeliveryFilter())) == 4
    assert client.get("/admin/").status_code == 200  # still logged in


def test_forms_without_the_cookie_are_refused(site, clock):
    client, store = site
    _, dead, *_ = fill(store, clock)
    login(client, clock)
    csrf = csrf_of(client.get("/admin/").get_data(as_text=True))
    client.delete_cookie(COOKIE, path="/admin")
    r = client.post(f"/admin/view/dead-letters/{dead.job_id}/requeue", data={"csrf_token": csrf})
    assert r.status_code == 401 and store.get_delivery(dead.delivery_id).job["state"] == "dead"


def test_csrf_survives_key_rotation(settings_factory, sqlite_store, clock):
    _, dead, *_ = fill(sqlite_store, clock)
    before = make_client(settings_factory, sqlite_store, clock, keys=(OLD_ADMIN_KEY,))
    tok = token(clock, keys=(OLD_ADMIN_KEY,))
    before.post("/admin/login", data={"token": tok})
    csrf = csrf_of(before.get("/admin/").get_data(as_text=True))
    after = make_client(settings_factory, sqlite_store, clock, keys=(OLD_ADMIN_KEY, ADMIN_KEY))
    after.set_cookie(COOKIE, tok, path="/admin")
    r = after.post(f"/admin/view/dead-letters/{dead.job_id}/requeue", data={"csrf_token": csrf})
    assert r.status_code == 303 and sqlite_store.get_delivery(dead.delivery_id).job["state"] == "pending"


def test_logout(site, clock):
    client, store = site
    fill(store, clock)
    login(client, clock)
    csrf = csrf_of(client.get("/admin/").get_data(as_text=True))
    r = client.post("/admin/logout", data={"csrf_token": csrf})
    assert r.status_code == 303 and client.get_cookie(COOKIE, path="/admin") is None
    html = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "You are logged out" in html and 'name="token"' in html and "ordDONE01" not in html


def test_page_escapes_stored_text(site, clock):
    client, store = site
    evil = '<script>alert("x")</script>'
    rec = record(store, "ord<b>1</b>", metadata={"note": evil}, now=clock())
    make_dead(store, rec.job_id, clock(), error=f"failed: {evil}")
    login(client, clock)
    for path in ("/admin/", f"/admin/view/deliveries/{rec.delivery_id}"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>" not in html and "<b>1</b>" not in html
        assert "&lt;script&gt;" in html and "ord&lt;b&gt;1&lt;/b&gt;" in html


def test_no_secret_in_any_page_or_answer(site, clock):
    client, store = site
    leaked = {"Authorization": "Bearer leaked-bearer-0123", REPLAY_HEADER: "leaked-replay-token-0123"}
    rec = record(store, "ordA", extra_headers=leaked, now=clock())
    make_dead(store, rec.job_id, clock(), error=f"upstream echoed {CLIENT_SECRET} and {ADMIN_KEY}")
    tok = token(clock)
    seen = []
    for path in (
        "/admin/deliveries",
        f"/admin/deliveries/{rec.delivery_id}",
        "/admin/stats",
        "/admin/deliveries?status=bogus",
        "/admin/deliveries/999",
    ):
        seen.append(client.get(path, headers=auth(tok)))
    seen.append(client.post(f"/admin/deliveries/{rec.delivery_id}/replay", headers=auth(tok)))
    seen.append(client.get("/admin/"))
    seen.append(client.post("/admin/login", data={"token": "nope"}))
    seen.append(client.post("/admin/login", data={"token": tok}))
    seen += [
        client.get("/admin/"),
        client.get(f"/admin/view/deliveries/{rec.delivery_id}"),
        client.get("/admin/view/deliveries/999"),
        client.post("/admin/logout", data={}),
    ]
    for r in seen:
        text = r.get_data(as_text=True)
        assert_no_secrets(text, tok, *leaked.values())
        headers = [v for k, v in r.headers.items() if k != "Set-Cookie"]
        assert_no_secrets(" ".join(headers), tok)
    dead_row = client.get(f"/admin/deliveries/{rec.delivery_id}", headers=auth(tok)).json["job"]["last_error"]
    assert dead_row == "upstream echoed [redacted] and [redacted]"


# --- webhook-app admin-token ---------------------------------------------------------------------


def run_cli(*args, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_"))}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "webhook_app", *args], env=full, capture_output=True, text=True, timeout=60
    )


def test_admin_token_command_makes_a_token_the_app_accepts(settings_factory, sqlite_store):
    p = run_cli("admin-token", "--ttl", "1h", WEBHOOK_APP_ADMIN_KEYS=f"{OLD_ADMIN_KEY},{ADMIN_KEY}")
    assert p.returncode == 0, p.stderr
    tok = p.stdout.strip()
    assert "\n" not in tok and "valid until" in p.stderr
    assert_no_secrets(p.stdout + p.stderr)
    claims = Tokens(ADMIN, (ADMIN_KEY,)).check(tok)  # signed with the newest key
    assert claims["ttl"] == 3600
    client = make_client(settings_factory, sqlite_store, time.time)
    assert client.get("/admin/stats", headers=auth(tok)).status_code == 200
    assert client.post("/admin/login", data={"token": tok}).status_code == 303


def test_admin_token_command_without_keys_exits_2_with_one_line():
    p = run_cli("admin-token")
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "WEBHOOK_APP_ADMIN_KEYS" in p.stderr


def test_admin_token_command_rejects_a_bad_ttl():
    p = run_cli("admin-token", "--ttl", "31d", WEBHOOK_APP_ADMIN_KEYS=ADMIN_KEY)
    assert p.returncode == 2 and "out of range" in p.stderr and p.stdout == ""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h", 3600), ("2d", 172800), ("900", 900), ("45s", 45), ("1H", 3600), ("30d", 30 * 86400)],
)
def test_parse_ttl(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1w", "-5m", "1.5h", "31d", "h", "99999999999"])
def test_parse_ttl_refuses(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_ttl(text)


# --- the operations log --------------------------------------------------------------------------


def test_operations_log_in_the_api_and_on_the_page(settings_factory, store, clock):
    client = make_client(settings_factory, store, clock)
    first = store.record_operation(
        "wallet_entry_deleted", subject="cus1", detail={"entry": "w2", "kept": "w1"}, now=clock()
    )
    store.record_operation("circuit_reset", subject="hook1", detail={"failures": 30}, now=clock() + 1)
    r = client.get("/admin/operations", headers=auth(token(clock)))
    assert r.status_code == 200
    ops = r.get_json()["operations"]
    assert [o["kind"] for o in ops] == ["circuit_reset", "wallet_entry_deleted"]
    assert ops[1] == {
        "id": first,
        "at": iso(clock()),
        "kind": "wallet_entry_deleted",
        "subject": "cus1",
        "detail": {"entry": "w2", "kept": "w1"},
    }
    only = client.get("/admin/operations?kind=wallet_entry_deleted&limit=5", headers=auth(token(clock)))
    assert [o["id"] for o in only.get_json()["operations"]] == [first]
    assert client.get("/admin/operations?kind=DROP TABLE", headers=auth(token(clock))).status_code == 400
    assert client.get("/admin/operations?limit=0", headers=auth(token(clock))).status_code == 400
    assert client.get("/admin/operations?bogus=1", headers=auth(token(clock))).status_code == 400
    login(client, clock)
    page = client.get("/admin/").get_data(as_text=True)
    assert f'id="operation-{first}"' in page and "entry=w2, kept=w1" in page and "circuit_reset" in page


def test_page_counts_saves_without_entry_and_links_to_them(site, clock):
    client, store = site
    t0 = clock()
    rec = record(store, "ordNOENT1", now=t0)
    make_done(store, rec.job_id, t0 + 1, rule="save", action="save_payment_source", outcome="saved_without_entry")
    other = record(store, "ordAPPLD1", now=t0 + 2)
    make_done(store, other.job_id, t0 + 3, rule="save", action="save_payment_source", outcome="applied")
    client.post("/admin/login", data={"token": token(clock)})
    html = client.get("/admin/").get_data(as_text=True)
    assert re.search(r'id="q-saved-without-entry">1<', html)
    assert 'href="?decision=saved_without_entry"' in html
    listed = client.get("/admin/?decision=saved_without_entry").get_data(as_text=True)
    assert "ordNOENT1" in listed and "ordAPPLD1" not in listed


@pytest.mark.parametrize("value", ["o1\x00x", "o1\x07"], ids=["nul", "control"])
def test_an_unprintable_filter_value_is_400_on_every_store(settings_factory, store, clock, value):
    # PostgreSQL cannot hold a NUL in a text parameter: it was a 500 there.
    client = make_client(settings_factory, store, clock)
    record(store, "o1", now=clock())
    from urllib.parse import quote

    q = quote(value, safe="")
    client.set_cookie(COOKIE, token(clock), path="/admin")
    for path in (f"/admin/deliveries?order_id={q}", f"/admin/?order_id={q}"):
        r = client.get(path, headers=auth(token(clock)))
        assert r.status_code == 400, (path, r.status_code)
