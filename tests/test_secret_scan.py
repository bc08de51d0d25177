"""Secrets never appear in answers, pages or output.

Two halves. The scanner itself (tests/support/secret_scan.py, loaded for the whole session) is checked by
running tiny inner pytest sessions in a subprocess: one that leaks registered secrets in each of the
places the scanner reads must fail, a clean one must pass. Then direct tests: every kind of error
answer the service gives carries none of the configured secrets, nor the signature it expected,
nor the request's header values; the admin page and API show no credential even when a stored
delivery carries some.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support import OTHER_SECRET, SECRET, Clock, make_settings, secret_scan, signed_headers
from support.builders import order_body

from webhook_app.events import Delivery
from webhook_app.signing import parse_secrets, sign
from webhook_app.store import DeliveryFilter
from webhook_app.store.sqlite import SQLiteStore
from webhook_app.tokens import ADMIN, REPLAY, REPLAY_HEADER, Tokens, make_replay_token
from webhook_app.web import create_app

TESTS = Path(__file__).parent
ROOT = TESTS.parent
ADMIN_KEY = "scan-admin-key-0123456789abcdef"
OLD_ADMIN_KEY = "scan-admin-key-old-0123456789ab"
REPLAY_KEY = "scan-replay-key-0123456789abcdef"
CLIENT_SECRET = "scan-cl-client-secret-01234567"
DB_PASSWORD = "scan-db-password-0123456789"
CONFIGURED = (SECRET, OTHER_SECRET, ADMIN_KEY, OLD_ADMIN_KEY, REPLAY_KEY, CLIENT_SECRET, DB_PASSWORD)
CANARY = "hdr-canary-7f3e"


# --- the scanner ------------------------------------------------------------------------------------

LEAKY = """
import logging
import pathlib

from support import procs
from support import secret_scan

LEAKED_SECRET = "{constant}"
secret_scan.register("{registered}", source="inner register()")
secret_scan.register("{artifact}", source="inner artifact secret")


def test_prints_a_constant():
    print("configured with", LEAKED_SECRET)


def test_logs_a_registered_value():
    logging.getLogger("inner").warning("calling with token %s", "{registered}")


def test_a_service_log_with_an_unredacted_bearer_token(tmp_path):
    log = tmp_path / "svc.log"
    log.write_text('{{"event":"call","auth":"Bearer {bearer}"}}\\n{{"auth":"Bearer [redacted]"}}\\n')
    procs.LOG_PATHS.append(log)


def test_writes_an_artifact():
    out = pathlib.Path("test-artifacts")
    out.mkdir(exist_ok=True)
    (out / "inner.json").write_text('{{"value": "{artifact}"}}')


def test_fails_showing_a_secret():
    assert LEAKED_SECRET == "something else"


def test_clean():
    print("nothing to see")
"""

CLEAN = """
from support import procs
from support import secret_scan

CLEAN_SECRET = "{constant}"


def test_uses_a_secret_without_printing_it(tmp_path):
    assert len(CLEAN_SECRET) > 8
    log = tmp_path / "svc.log"
    log.write_text('{{"event":"delivery","auth":"Bearer [redacted]"}}\\n')
    procs.LOG_PATHS.append(log)
    print("a clean line")
"""


def inner_session(tmp_path: Path, source: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    (tmp_path / "test_inner.py").write_text(source)
    # Without CI in its environment: under CI pytest prints failure texts untruncated in its short
    # summary, and the inner session's deliberately failing test would show its secret there.
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "BUILD_NUMBER")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "support.secret_scan",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads((tmp_path / "test-artifacts" / "secret-scan.json").read_text())
    return proc, report


def test_the_scan_fails_a_session_that_leaks_and_says_where_without_the_secret(tmp_path):
    values = {k: f"inner-{k}-{uuid.uuid4().hex}" for k in ("constant", "registered", "artifact", "bearer")}
    proc, report = inner_session(tmp_path, LEAKY.format(**values))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "FAILED secret-scan" in out and "2 failed, 5 passed" in out.splitlines()[-1], out[-2000:]
    said = out[out.index("_ secret scan _") :]  # the scanner's own report: where, never what
    if "short test summary info" in said:  # pytest's own summary quotes the failing assertion
        said = said[: said.index("short test summary info")]
    assert "5 secret(s) found" in said
    for value in values.values():
        assert value not in said and value not in json.dumps(report)
    assert not report["ok"] and report["secrets_checked"] >= 3
    places = {(f["secret"], f["where"].split(" ")[0].split("/")[-1]) for f in report["findings"]}
    assert ("test_inner.LEAKED_SECRET", "test_inner.py::test_prints_a_constant") in places
    assert ("test_inner.LEAKED_SECRET", "test_inner.py::test_fails_showing_a_secret") in places
    assert ("inner register()", "test_inner.py::test_logs_a_registered_value") in places
    assert ("a bearer token in a log", "svc.log") in places
    assert ("inner artifact secret", "inner.json") in places
    assert len(report["findings"]) == 5  # the redacted bearer token is not one
    assert report["scanned"]["service_logs"] and report["scanned"]["report_sections"]["count"] >= 3


def test_the_scan_passes_a_clean_session_and_records_what_it_read(tmp_path):
    proc, report = inner_session(tmp_path, CLEAN.format(constant=f"inner-clean-{uuid.uuid4().hex}"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "secret scan:" in proc.stdout and ": clean" in proc.stdout
    assert report["ok"] and report["findings"] == [] and report["secrets_checked"] >= 1
    assert report["files_scanned"] >= 1 and report["bytes_scanned"] > 0


def test_this_session_registers_the_suites_secrets():
    """The outer session knows the constants of the test modules and the fake's secrets."""
    known = secret_scan.registered()
    for value in (SECRET, OTHER_SECRET, ADMIN_KEY, REPLAY_KEY, CLIENT_SECRET):
        assert value in known, value


# --- error answers ---------------------------------------------------------------------------------


@pytest.fixture
def app_env(tmp_path):
    clock = Clock()
    store = SQLiteStore(str(tmp_path / "secrets.db"))
    store.migrate()
    settings = make_settings(
        tmp_path,
        admin_keys=(OLD_ADMIN_KEY, ADMIN_KEY),
        replay_keys=(REPLAY_KEY,),
        cl_client_secret=CLIENT_SECRET,
        max_body_bytes=4096,
    )
    yield create_app(settings, store=store, clock=clock), store, clock, settings
    store.close()


def clean(answer, *extra: str, body: bytes = b"") -> None:
    """No configured secret, no signature the service would expect, no header canary."""
    text = answer.get_data(as_text=True) + "\n" + "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
    for value in (*CONFIGURED, *extra):
        assert value not in text, (answer.status_code, text[:300])
    for secret in (SECRET, OTHER_SECRET):
        assert sign(body, secret=secret) not in text
    assert CANARY not in text, text[:300]


def test_no_intake_error_answer_carries_a_secret_or_what_was_expected(app_env):
    app, store, clock, _ = app_env
    client = app.test_client()
    good = order_body("ordSEC01")

    def h(body, **over):
        headers = {**signed_headers(body), "X-Trace": CANARY, "User-Agent": CANARY}
        headers.update(over)
        return {k: v for k, v in headers.items() if v is not None}

    cases = {
        # 401: every way a signature can be wrong, and the replay token's
        "no signature": (good, h(good, **{"X-CommerceLayer-Signature": None})),
        "not base64": (good, h(good, **{"X-CommerceLayer-Signature": CANARY + "!"})),
        "wrong length": (good, h(good, **{"X-CommerceLayer-Signature": "AAAA"})),
        "another secret": (good, h(good, **{"X-CommerceLayer-Signature": sign(good, secret="nope-0123456789")})),
        "another body": (good, h(good, **{"X-CommerceLayer-Signature": sign(b"x", secret=SECRET)})),
        "forged replay": (good, h(good, **{REPLAY_HEADER: CANARY})),
        "replay for another body": (
            good,
            h(
                good,
                **{
                    REPLAY_HEADER: make_replay_token(
                        Tokens(REPLAY, (REPLAY_KEY,), clock), b"other", topic="orders.place", ttl=60
                    )
                },
            ),
        ),
        # 400: every way a signed body can be malformed
        "not JSON": (b"{", h(b"{")),
        "not UTF-8": (b"\xff", h(b"\xff")),
        "NaN": (b'{"data":{"type":"orders","id":"x","n":NaN}}', h(b'{"data":{"type":"orders","id":"x","n":NaN}}')),
        "no data": (b"{}", h(b"{}")),
        "bad id": (b'{"data":{"type":"orders","id":5}}', h(b'{"data":{"type":"orders","id":5}}')),
        "too deep": (b"[" * 80 + b"]" * 80, h(b"[" * 80 + b"]" * 80)),
        "no topic": (good, h(good, **{"X-CommerceLayer-Topic": None})),
        "bad topic": (good, h(good, **{"X-CommerceLayer-Topic": CANARY})),
        "topic and type disagree": (
            order_body("c").replace(b'"orders"', b'"customers"', 1),
            h(order_body("c").replace(b'"orders"', b'"customers"', 1)),
        ),
        # 413 and 415, decided from the headers
        "too large": (b"{" + b" " * 5000 + b"}", h(b"{" + b" " * 5000 + b"}")),
        "not JSON media type": (good, h(good, **{"Content-Type": "text/" + CANARY})),
    }
    statuses = set()
    for name, (body, headers) in cases.items():
        r = client.post("/webhooks/commercelayer", data=body, headers=headers)
        assert 400 <= r.status_code < 500, (name, r.status_code)
        assert r.json["errors"][0]["detail"], name
        clean(r, body=body)
        statuses.add(r.status_code)
    assert statuses == {400, 401, 413, 415}
    for path, method in (("/nope", "GET"), ("/webhooks/commercelayer", "GET")):  # 404, 405
        r = client.open(path, method=method, headers={"X-Trace": CANARY})
        assert r.status_code in (404, 405)
        clean(r)
    assert store.list_deliveries(DeliveryFilter()) == []


def test_no_secret_when_nothing_is_configured_either(tmp_path):
    """No webhook secret: every delivery is refused (401), saying so without any value."""
    app = create_app(make_settings(tmp_path, webhook_secrets=()), store=SQLiteStore(str(tmp_path / "n.db")))
    body = order_body("ordNONE")
    r = app.test_client().post("/webhooks/commercelayer", data=body, headers=signed_headers(body))
    assert r.status_code == 401 and "no webhook secret" in r.json["errors"][0]["detail"]
    clean(r, body=body)


def test_a_store_failure_answer_does_not_carry_the_database_password(tmp_path):
    """503 from the intake and from /readyz when PostgreSQL cannot be reached: the answer says
    why, and the URL's password is not in it (nor in the Retry-After'd intake answer)."""
    pytest.importorskip("psycopg")
    from webhook_app.store.postgres import PostgresStore

    url = f"postgresql://app:{DB_PASSWORD}@127.0.0.1:9/nowhere"  # port 9: nothing listens
    store = PostgresStore(url)
    settings = make_settings(tmp_path, database_url=url)
    client = create_app(settings, store=store).test_client()
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json["checks"]["database"]
        clean(ready)
        body = order_body("ordPG01")
        r = client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body))
        assert r.status_code == 503 and r.headers["Retry-After"]
        clean(r, body=body)
    finally:
        store.close()


# --- the admin API and page ---------------------------------------------------------------------------


def test_admin_answers_and_pages_never_show_keys_tokens_or_credentials(app_env):
    """A stored delivery carrying every kind of credential header (as an old row might), a dead
    letter whose error quotes secrets, and every admin answer and page, logged in or not: none
    shows a key, a secret, the admin token, or a stored credential."""
    app, store, clock, _ = app_env
    fake_cl_token = "fakecl-access-token-" + uuid.uuid4().hex
    replay_token = make_replay_token(Tokens(REPLAY, (REPLAY_KEY,), clock), b"{}", topic="orders.place", ttl=60)
    credentials = {
        "Authorization": f"Bearer {fake_cl_token}",
        "Proxy-Authorization": f"Basic {fake_cl_token}",
        "Cookie": f"webhook_app_admin={fake_cl_token}",
        "X-Admin-Token": fake_cl_token,
        REPLAY_HEADER: replay_token,
    }
    body = order_body("ordADM01")
    d = Delivery.from_http(signed_headers(body), body, secrets=parse_secrets(f"main:{SECRET}"))
    rec = store.record_delivery(dataclasses.replace(d, headers={**d.headers, **credentials}), now=clock())
    job = store.claim_job(worker="w", lease_seconds=60, now=clock())
    store.dead_letter(
        job.id, worker="w", error=f"CL said: bad {CLIENT_SECRET} / {ADMIN_KEY} / {SECRET}", decision=None, now=clock()
    )
    tok = Tokens(ADMIN, (OLD_ADMIN_KEY, ADMIN_KEY), clock).make(ttl=600)
    api = {"Authorization": f"Bearer {tok}"}
    client = app.test_client()
    answers = [
        client.get(p, headers=api)
        for p in (
            "/admin/deliveries",
            f"/admin/deliveries/{rec.delivery_id}",
            "/admin/stats",
            "/admin/deliveries?x=1",
            "/admin/deliveries/999",
        )
    ]
    answers += [
        client.post(f"/admin/dead-letters/{rec.job_id}/requeue", headers=api),
        client.post(f"/admin/dead-letters/{rec.job_id}/requeue", headers=api),  # 409 now
        client.get("/admin/deliveries", headers={"Authorization": f"Bearer {tok}x"}),
        client.get("/admin/deliveries", headers={"Authorization": CANARY}),
        client.get("/admin/"),
        client.post("/admin/login", data={"token": tok + "x"}),
        client.post("/admin/login", data={"token": tok}),
    ]
    answers += [
        client.get("/admin/"),
        client.get(f"/admin/view/deliveries/{rec.delivery_id}"),
        client.get("/admin/?status=nope"),
        client.get("/admin/view/deliveries/999"),
        client.post(f"/admin/view/deliveries/{rec.delivery_id}/replay", data={"csrf_token": "x"}),
    ]
    assert {a.status_code for a in answers} >= {200, 202, 303, 400, 401, 403, 404, 409}
    for a in answers:
        headers = {k: v for k, v in a.headers.items() if k != "Set-Cookie"}  # the login sets the token
        text = a.get_data(as_text=True) + json.dumps(headers)
        for value in (*CONFIGURED, tok, fake_cl_token, replay_token, CANARY):
            assert value not in text, (a.status_code, a.request.path)
    detail = client.get(f"/admin/deliveries/{rec.delivery_id}", headers=api).json
    assert not {k.lower() for k in detail["headers"]} & {k.lower() for k in credentials}
