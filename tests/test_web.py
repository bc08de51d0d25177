"""The intake through the real WSGI app (Flask test client) on a real SQLite file."""

from __future__ import annotations

import json

import pytest
from support import OTHER_SECRET, SECRET, signed_headers
from support.builders import order_body

from webhook_app.errors import StoreUnavailable
from webhook_app.store import DeliveryFilter
from webhook_app.web import create_app

URL = "/webhooks/commercelayer"


@pytest.fixture
def app_env(settings_factory, sqlite_store, clock):
    settings = settings_factory(max_body_bytes=64 * 1024)
    app = create_app(settings, store=sqlite_store, clock=clock)
    return app.test_client(), sqlite_store


def post(client, body, headers):
    return client.post(URL, data=body, headers=headers)


def test_accepts_signed_order_and_stores_it(app_env):
    client, store = app_env
    body = order_body("o1")
    r = post(client, body, signed_headers(body))
    assert r.status_code == 202 and r.json["status"] == "accepted" and r.json["job_id"]
    [d] = store.list_deliveries(DeliveryFilter(with_body=True))
    assert d.body == body and d.order_id == "o1" and d.secret_label == "main"
    assert r.headers["X-Request-Id"]


def test_rotated_secret_is_accepted_and_labelled(app_env):
    client, store = app_env
    body = order_body("o1")
    assert post(client, body, signed_headers(body, secret=OTHER_SECRET)).status_code == 202
    assert store.list_deliveries(DeliveryFilter())[0].secret_label == "old"


def test_redelivery_answers_2xx_without_a_second_job(app_env):
    client, store = app_env
    body = order_body("o1")
    first = post(client, body, signed_headers(body))
    again = post(client, body, signed_headers(body))
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    assert again.json["delivery_id"] == first.json["delivery_id"]
    assert store.queue_stats(now=0).pending == 1


@pytest.mark.parametrize(
    "mangle",
    [
        lambda h: h.pop("X-CommerceLayer-Signature"),
        lambda h: h.update({"X-CommerceLayer-Signature": "AAAA"}),
        lambda h: h.update({"X-CommerceLayer-Signature": signed_headers(b"other")["X-CommerceLayer-Signature"]}),
    ],
)
def test_bad_signatures_get_401_and_store_nothing(app_env, mangle):
    client, store = app_env
    body = order_body("o1")
    h = signed_headers(body)
    mangle(h)
    r = post(client, body, h)
    assert r.status_code == 401 and r.json["errors"][0]["title"] == "Invalid signature"
    assert store.list_deliveries(DeliveryFilter()) == []
    assert SECRET not in r.get_data(as_text=True)


def test_body_limit_413_from_content_length_without_reading(app_env):
    client, store = app_env
    body = b"x" * (64 * 1024 + 1)
    r = post(client, body, signed_headers(body))
    assert r.status_code == 413
    # a declared length over the limit is refused before the body is read
    r = client.post(URL, input_stream=_Unreadable(), headers=signed_headers(b"{}"))
    assert r.status_code == 413
    assert store.list_deliveries(DeliveryFilter()) == []


class _Unreadable:
    def read(self, *a):
        raise AssertionError("the body must not be read")

    readline = read

    # werkzeug's test client measures the stream by seeking to its end: claim 10 MiB.
    pos = 0

    def tell(self):
        return self.pos

    def seek(self, offset, whence=0):
        self.pos = 10 * 1024 * 1024 if whence == 2 else offset
        return self.pos


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "application/xml", ""])
def test_non_json_media_type_is_415(app_env, ctype):
    client, _ = app_env
    body = order_body("o1")
    h = signed_headers(body)
    h["Content-Type"] = ctype
    assert post(client, body, h).status_code == 415


def test_jsonapi_media_type_accepted(app_env):
    client, _ = app_env
    body = order_body("o1")
    h = signed_headers(body, content_type="application/vnd.api+json")
    assert post(client, body, h).status_code == 202


@pytest.mark.parametrize("body", [b"{}", b'{"data":{"type":"orders"}}', b"[1]", b"not json", b'{"data":{"id":"1"}}'])
def test_bad_json_api_is_400_when_signed(app_env, body):
    client, store = app_env
    r = post(client, body, signed_headers(body))
    assert r.status_code == 400 and r.json["errors"][0]["detail"]
    assert store.list_deliveries(DeliveryFilter()) == []


def test_missing_topic_is_400(app_env):
    client, _ = app_env
    body = order_body("o1")
    h = signed_headers(body)
    del h["X-CommerceLayer-Topic"]
    r = post(client, body, h)
    assert r.status_code == 400 and "X-CommerceLayer-Topic" in r.json["errors"][0]["detail"]


def test_non_order_topic_is_acknowledged_and_recorded_as_ignored(app_env):
    client, store = app_env
    body = json.dumps({"data": {"id": "c1", "type": "customers"}}).encode()
    r = post(client, body, signed_headers(body, "customers.create"))
    assert r.status_code == 200 and r.json["status"] == "ignored"
    [d] = store.list_deliveries(DeliveryFilter())
    assert d.status == "ignored" and d.job is None


def test_store_failure_is_503_never_2xx(settings_factory, sqlite_store):
    class Broken(type(sqlite_store)):
        def record_delivery(self, *a, **kw):
            raise StoreUnavailable("SQLite database or disk is full")

    broken = Broken(sqlite_store.path)
    client = create_app(settings_factory(), store=broken).test_client()
    body = order_body("o1")
    r = post(client, body, signed_headers(body))
    assert r.status_code == 503 and r.headers["Retry-After"] and "full" in r.json["errors"][0]["detail"]


def test_a_bug_in_the_intake_is_a_json_500_logged_and_counted(settings_factory, sqlite_store, caplog):
    """The intake answers before Flask (web/intake.py): an unexpected exception is still a JSON
    500 with a request id, its traceback in the log, and counted as a 500 for the alert."""
    from webhook_app import metrics

    class Buggy(type(sqlite_store)):
        def record_delivery(self, *a, **kw):
            raise RuntimeError("a bug")

    buggy = Buggy(sqlite_store.path)
    client = create_app(settings_factory(), store=buggy).test_client()
    before = metrics.INTAKE_RESPONSES.labels("500")._value.get()
    body = order_body("oBug1")
    with caplog.at_level("ERROR"):
        r = post(client, body, signed_headers(body))
    assert r.status_code == 500 and r.json["errors"][0]["status"] == "500"
    assert r.headers["X-Request-Id"] and r.headers["Cache-Control"] == "no-store"
    assert "a bug" not in r.get_data(as_text=True)  # the answer does not echo the exception
    assert any(rec.exc_info and "a bug" in str(rec.exc_info[1]) for rec in caplog.records)
    assert metrics.INTAKE_RESPONSES.labels("500")._value.get() == before + 1


def test_health_and_readiness(app_env):
    client, _ = app_env
    assert client.get("/healthz").json == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json["checks"]["database"] == "ok"


def test_readiness_fails_on_old_schema(settings_factory, tmp_path):
    from webhook_app.store.sqlite import SQLiteStore

    empty = SQLiteStore(str(tmp_path / "empty.db"))
    r = create_app(settings_factory(), store=empty).test_client().get("/readyz")
    assert r.status_code == 503 and "db upgrade" in r.json["checks"]["database"]
    empty.close()


def test_unknown_route_and_method_are_json(app_env):
    client, _ = app_env
    assert client.get("/nope").status_code == 404
    r = client.get(URL)
    assert r.status_code == 405 and r.json["errors"][0]["status"] == "405"


def test_forwarded_headers_trusted_only_for_configured_hops(settings_factory, sqlite_store):
    from flask import request

    for hops, expected in ((0, "127.0.0.1"), (1, "203.0.113.9")):
        app = create_app(settings_factory(forwarded_hops=hops), store=sqlite_store)

        @app.get("/whoami")
        def whoami():
            return {"ip": request.remote_addr}

        r = app.test_client().get(
            "/whoami",
            headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9"},
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        )
        assert r.json["ip"] == expected


REPLAY_KEY = "replay-key-0123456789abcdef"


def test_replay_token_makes_a_repeat_run_again(settings_factory, sqlite_store, clock):
    from webhook_app.tokens import REPLAY, REPLAY_HEADER, Tokens, make_replay_token

    client = create_app(settings_factory(replay_keys=(REPLAY_KEY,)), store=sqlite_store, clock=clock).test_client()
    body = order_body("o1")
    first = post(client, body, signed_headers(body))
    assert post(client, body, signed_headers(body)).json["status"] == "duplicate"  # no token: duplicate
    tok = make_replay_token(Tokens(REPLAY, (REPLAY_KEY,), clock), body, topic="orders.place", ttl=60)
    replay = post(client, body, {**signed_headers(body), REPLAY_HEADER: tok})
    assert replay.status_code == 202 and replay.json["delivery_id"] != first.json["delivery_id"]
    stored = sqlite_store.get_delivery(replay.json["delivery_id"])
    assert stored.replay_of == first.json["delivery_id"]
    assert post(client, body, {**signed_headers(body), REPLAY_HEADER: tok}).json["status"] == "duplicate"
    # forged, expired, wrong-body and wrong-purpose tokens are refused and store nothing
    count = len(sqlite_store.list_deliveries(DeliveryFilter()))
    forged = make_replay_token(Tokens(REPLAY, ("attacker-key-0123456789abc",)), body, topic="orders.place", ttl=60)
    other = make_replay_token(Tokens(REPLAY, (REPLAY_KEY,), clock), b"other", topic="orders.place", ttl=60)
    admin = Tokens("admin", (REPLAY_KEY,), clock).make(ttl=60)
    expired = make_replay_token(Tokens(REPLAY, (REPLAY_KEY,), clock), body, topic="orders.place", ttl=1)
    clock.advance(5)
    for bad in (forged, other, admin, expired, "garbage"):
        r = post(client, body, {**signed_headers(body), REPLAY_HEADER: bad})
        assert r.status_code == 401, bad
    assert len(sqlite_store.list_deliveries(DeliveryFilter())) == count


def test_a_replay_token_is_refused_under_another_topic(settings_factory, sqlite_store, clock):
    from webhook_app.tokens import REPLAY, REPLAY_HEADER, Tokens, make_replay_token

    client = create_app(settings_factory(replay_keys=(REPLAY_KEY,)), store=sqlite_store, clock=clock).test_client()
    body = order_body("o1")
    post(client, body, signed_headers(body, "orders.place"))
    tok = make_replay_token(Tokens(REPLAY, (REPLAY_KEY,), clock), body, topic="orders.place", ttl=60)
    count = len(sqlite_store.list_deliveries(DeliveryFilter()))
    r = post(client, body, {**signed_headers(body, "orders.cancel"), REPLAY_HEADER: tok})
    assert r.status_code == 401
    assert len(sqlite_store.list_deliveries(DeliveryFilter())) == count


def test_one_signed_body_is_stored_only_under_known_topics(settings_factory, sqlite_store, clock):
    # Commerce Layer signs the body only: the topic header is free. Re-posting one captured body
    # and signature under invented topics must store nothing and add no metric label series.
    client = create_app(settings_factory(), store=sqlite_store, clock=clock).test_client()
    body = order_body("o1")
    assert post(client, body, signed_headers(body, "orders.place")).status_code == 202
    for topic in (
        "orders.bogus",
        "orders.place_again",
        "foo.bar",
        "shipments.teleport",
        *(f"x.t{n}" for n in range(40)),
    ):
        r = post(client, body, signed_headers(body, topic))
        assert r.status_code == 400, topic
    assert len(sqlite_store.list_deliveries(DeliveryFilter())) == 1
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "foo.bar" not in metrics and "x.t1" not in metrics


def test_known_non_order_topics_are_ignored_and_more_can_be_configured(settings_factory, sqlite_store, clock):
    app = create_app(settings_factory(extra_topics=("shipments.teleport",)), store=sqlite_store, clock=clock)
    client = app.test_client()
    body = json.dumps({"data": {"id": "cust1", "type": "customers", "attributes": {}}}).encode()
    assert post(client, body, signed_headers(body, "customers.create")).json["status"] == "ignored"
    assert post(client, body, signed_headers(body, "shipments.teleport")).json["status"] == "ignored"
    assert post(client, body, signed_headers(body, "shipments.levitate")).status_code == 400


# --- only Commerce Layer let in (WEBHOOK_APP_ALLOWED_SOURCES; webhook_app/sources.py) ------------

CL_EU = "54.246.59.198"  # one of Commerce Layer's published webhook addresses


class _UnreadableBody:
    """A request body that must not be read: the source is refused from the headers alone."""

    def read(self, *_args: object) -> bytes:
        raise AssertionError("the body was read")

    readline = read


def _intake_environ(body: bytes, peer: str, **headers: str) -> dict:
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(
        path=URL, method="POST", data=body, headers={**signed_headers(body), **headers}
    ).get_environ()
    environ["REMOTE_ADDR"] = peer
    environ["wsgi.input"] = _UnreadableBody()
    return environ


def _call(app, environ) -> tuple[int, dict]:
    out = {}

    def start_response(status, _headers):
        out["status"] = int(status.split()[0])

    body = b"".join(app.wsgi_app(environ, start_response))
    return out["status"], json.loads(body)


def test_a_delivery_from_a_source_not_allowed_is_403_before_its_body_is_read_and_logged_without_it(
    settings_factory, sqlite_store, caplog
):
    from webhook_app.sources import parse_allowed_sources

    app = create_app(settings_factory(allowed_sources=parse_allowed_sources("commercelayer")), store=sqlite_store)
    body = order_body("oSrc1")
    with caplog.at_level("INFO"):
        status, answer = _call(app, _intake_environ(body, "127.0.0.1", **{"X-Forwarded-For": CL_EU}))
    assert status == 403 and answer["errors"][0]["title"] == "Forbidden"
    assert "127.0.0.1" not in json.dumps(answer)  # the answer never reflects what the client sent
    assert sqlite_store.list_deliveries(DeliveryFilter()) == []
    [refused] = [r for r in caplog.records if r.getMessage() == "request refused"]
    assert refused.error == "SourceNotAllowed" and refused.source == "127.0.0.1" and refused.status == 403
    assert "oSrc1" not in caplog.text  # nothing of the body
    # the same delivery from Commerce Layer's address is stored; other routes are not affected
    r = app.test_client().post(URL, data=body, headers=signed_headers(body), environ_base={"REMOTE_ADDR": CL_EU})
    assert r.status_code == 202
    assert app.test_client().get("/healthz", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 200


def test_off_by_default_every_source_may_deliver(app_env):
    client, store = app_env
    body = order_body("oSrc2")
    r = client.post(URL, data=body, headers=signed_headers(body), environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert r.status_code == 202 and len(store.list_deliveries(DeliveryFilter())) == 1


def test_the_source_is_the_connection_s_peer_even_after_proxy_fix_rewrote_remote_addr(settings_factory, sqlite_store):
    """With WEBHOOK_APP_FORWARDED_HOPS ProxyFix sets REMOTE_ADDR from X-Forwarded-For before the
    intake runs; the allowlist must still start from the real peer and believe only trusted ones."""
    from webhook_app.sources import parse_allowed_sources, parse_trusted_proxies

    settings = settings_factory(
        allowed_sources=parse_allowed_sources("commercelayer"),
        trusted_proxies=parse_trusted_proxies("127.0.0.1/32"),
        forwarded_hops=1,
    )
    client = create_app(settings, store=sqlite_store).test_client()
    body = order_body("oSrc3")
    spoofed = client.post(
        URL,
        data=body,
        headers={**signed_headers(body), "X-Forwarded-For": CL_EU},
        environ_base={"REMOTE_ADDR": "127.0.0.2"},  # not a trusted proxy: its X-Forwarded-For is its own claim
    )
    assert spoofed.status_code == 403 and sqlite_store.list_deliveries(DeliveryFilter()) == []
    proxied = client.post(
        URL,
        data=body,
        headers={**signed_headers(body), "X-Forwarded-For": CL_EU},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert proxied.status_code == 202


def test_an_error_is_answered_alike_by_the_intake_and_by_flasks_routes(settings_factory, sqlite_store, caplog):
    """web/errors.py is the one place errors become answers: the WSGI intake and a Flask route
    refusing with the same StoreError give the same status, body, Retry-After and log line."""

    class Broken(type(sqlite_store)):
        def record_delivery(self, *a, **kw):
            raise StoreUnavailable("SQLite database or disk is full")

    app = create_app(settings_factory(), store=Broken(sqlite_store.path))

    def boom():
        raise StoreUnavailable("SQLite database or disk is full")

    app.add_url_rule("/boom", view_func=boom)
    client = app.test_client()
    body = order_body("oErr1")
    with caplog.at_level("INFO"):
        from_intake = post(client, body, signed_headers(body))
        from_flask = client.get("/boom")
    for r in (from_intake, from_flask):
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.json == {
            "errors": [{"status": "503", "title": "Storage unavailable", "detail": "SQLite database or disk is full"}]
        }
    refused = [r for r in caplog.records if r.getMessage() == "request refused"]
    assert [(r.levelname, r.error, r.status) for r in refused] == [("WARNING", "StoreUnavailable", 503)] * 2
    assert [r.path for r in refused] == ["/webhooks/commercelayer", "/boom"]


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "12", "HTTP_X_COMMERCELAYER_TOPIC": "orders.place"},
        {"CONTENT_TYPE": "", "CONTENT_LENGTH": "", "HTTP_USER_AGENT": "cl", "HTTP_X_REQUEST_ID": "r-1"},
        # gunicorn puts both in the environ without HTTP_; a client's own copies are not headers
        {"HTTP_CONTENT_TYPE": "text/plain", "HTTP_CONTENT_LENGTH": "9", "HTTP_ACCEPT": "*/*"},
        {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/webhooks/commercelayer",
            "wsgi.input": None,
            "HTTP_X_FORWARDED_FOR": "10.0.0.1, 10.0.0.2",
            "HTTP_X_COMMERCELAYER_SIGNATURE": "abc=",
            "HTTP_X_WEBHOOK_APP_REPLAY": "tok",
            "HTTP_": "empty name",
            "SERVER_NAME": "x",
        },
    ],
)
def test_the_intake_reads_headers_as_werkzeug_does(environ):
    from werkzeug.datastructures import EnvironHeaders

    from webhook_app.web.intake import environ_headers

    assert environ_headers(environ) == dict(EnvironHeaders(environ))
    assert list(environ_headers(environ)) == list(dict(EnvironHeaders(environ)))
