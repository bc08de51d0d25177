"""End to end: `webhook-app serve` as a real process, the fake Commerce Layer over HTTP."""

from __future__ import annotations

import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import requests
from support import SECRET, base_env, signed_headers
from support.builders import order_body
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.store import DeliveryFilter
from webhook_app.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e
SCHEMA = json.loads((Path(__file__).parent / "data" / "orderUpdate.schema.json").read_text())
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


def service_env(tmp_path, fake=None, **extra):
    env = {
        "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'e2e.db'}",
        "WEBHOOK_APP_POLL_INTERVAL": "0.02",
        "WEBHOOK_APP_LOG_LEVEL": "INFO",
    }
    if fake is not None:
        env.update(
            CL_CLIENT_ID=fake.client_id,
            CL_CLIENT_SECRET=fake.client_secret,
            CL_API_BASE=fake.url,
            CL_AUTH_URL=fake.url + "/oauth/token",
            WEBHOOK_APP_MODE="enforce",
        )
    env.update(extra)
    return env


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(env, command="serve"):
        port = free_port()
        svc = Service([command, "--bind", f"127.0.0.1:{port}"], env, tmp_path / f"{command}-{port}.log")
        started.append(svc)
        svc.url = f"http://127.0.0.1:{port}"
        wait_http(svc.url + "/healthz", proc=svc.proc)
        return svc

    yield start
    for svc in started:
        svc.stop()


def send(url, body, topic="orders.place", **kw):
    return requests.post(
        url + "/webhooks/commercelayer", data=body, headers=signed_headers(body, topic, **kw), timeout=5
    )


def test_enforce_flags_each_registered_order_exactly_once(serve, fake_cl, tmp_path):
    registered = [f"ordR{n:04d}" for n in range(6)]
    for oid in registered:
        fake_cl.add_order(oid, source_id=f"ps{oid}")
    fake_cl.add_order("ordGUEST01", guest=True, customer_id=None, source_id="psG")
    fake_cl.add_order("ordWIRE001", source_type="wire_transfers", source_id="psW")
    svc = serve(service_env(tmp_path, fake_cl))
    sent_at = {}
    for round_ in range(3):  # every delivery three times
        for oid in registered:
            r = send(svc.url, order_body(oid, source_id=f"ps{oid}"))
            assert r.status_code in (200, 202)
            sent_at.setdefault(oid, time.time())
            assert r.json()["status"] == ("accepted" if round_ == 0 else "duplicate")
        assert send(svc.url, order_body("ordGUEST01", guest=True, customer_id=None)).status_code in (200, 202)
        assert send(svc.url, order_body("ordWIRE001", source_type="wire_transfers")).status_code in (200, 202)
    for oid in registered:  # other topics for the same orders do not flag again
        assert send(svc.url, order_body(oid, source_id=f"ps{oid}", status="approved"), "orders.approve").ok

    store = SQLiteStore(str(tmp_path / "e2e.db"))
    wait_until(
        lambda: store.queue_stats(now=time.time()).pending == 0 and store.queue_stats(now=time.time()).running == 0,
        what="queue drained",
    )
    store.close()
    patches = fake_cl.patches()
    assert sorted(p["path"].rsplit("/", 1)[1] for p in patches) == sorted(registered)
    for p in patches:
        assert p["headers"]["Accept"] == "application/vnd.api+json"
        assert p["headers"]["Content-Type"].startswith("application/vnd.api+json")
        assert p["headers"]["Authorization"].startswith("Bearer ")
        assert p["args"]["include"] == (
            "available_customer_payment_sources,available_customer_payment_sources.payment_source"
        )
        jsonschema.validate(p["json"], SCHEMA)
        assert p["json"]["data"]["attributes"] == {"_save_payment_source_to_customer_wallet": True}
    assert all(len(fake_cl.orders[o].wallet) == 1 for o in registered)
    # /metrics of `serve` adds up the gunicorn workers and the worker process (multiprocess mode);
    # it answers on the operator address (WEBHOOK_APP_OPERATOR_BIND), not the public one
    assert requests.get(svc.url + "/metrics", timeout=5).status_code == 404
    text = requests.get(svc.operator_url + "/metrics", timeout=5).text
    assert (
        'webhook_app_decisions_total{action="save_payment_source",outcome="applied",'
        'rule="save-registered-customer-source"} 6.0' in text
    )
    assert 'webhook_app_deliveries_total{outcome="duplicate",topic="orders.place"} 16.0' in text
    assert 'webhook_app_commercelayer_responses_total{route="orders.patch",status="200"} 6.0' in text
    latencies = sorted(p["at"] - sent_at[p["path"].rsplit("/", 1)[1]] for p in patches)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "receipt-to-patch.json").write_text(
        json.dumps(
            {
                "orders": len(latencies),
                "median_ms": round(statistics.median(latencies) * 1000, 1),
                "max_ms": round(latencies[-1] * 1000, 1),
            }
        )
    )
    assert latencies[-1] < 5  # generous bound for a loaded CI machine; the figure is in the artifact


def test_shadow_mode_never_calls_commerce_layer(serve, fake_cl, tmp_path):
    fake_cl.add_order("ordS000001")
    env = service_env(tmp_path, fake_cl, WEBHOOK_APP_MODE="shadow")
    svc = serve(env)
    assert send(svc.url, order_body("ordS000001")).status_code == 202
    store = SQLiteStore(str(tmp_path / "e2e.db"))
    wait_until(lambda: store.queue_stats(now=time.time()).done == 1, what="job done")
    [d] = store.list_deliveries(DeliveryFilter())
    assert d.decisions[0]["outcome"] == "shadow"
    store.close()
    assert fake_cl.requests == []


def test_unsigned_and_oversized_requests_on_the_real_server(serve, tmp_path):
    svc = serve(service_env(tmp_path))
    body = order_body("o1")
    r = requests.post(
        svc.url + "/webhooks/commercelayer",
        data=body,
        headers={"Content-Type": "application/json", "X-CommerceLayer-Topic": "orders.place"},
        timeout=5,
    )
    assert r.status_code == 401
    # declare 10 MiB, send nothing: the answer must come at once, without waiting for the body
    host, port = svc.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            b"POST /webhooks/commercelayer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-CommerceLayer-Topic: orders.place\r\nX-CommerceLayer-Signature: x\r\n"
            b"Content-Length: 10485760\r\n\r\n"
        )
        started = time.monotonic()
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413") and time.monotonic() - started < 3


def test_serve_stops_cleanly_on_sigterm(serve, tmp_path):
    svc = serve(service_env(tmp_path))
    wait_until(lambda: "worker started" in svc.output(), what="worker started")
    assert svc.stop(signal.SIGTERM) == 0
    out = svc.output()
    assert "worker stopped" in out and "Traceback" not in out


def test_serve_opens_no_control_socket_in_home_or_runtime_dir(serve, tmp_path):
    """gunicorn >= 25.1 would create $XDG_RUNTIME_DIR/gunicorn.ctl or $HOME/.gunicorn/ and replace
    another instance's socket there; `serve` (and `web` without the deploy config) keeps it off."""
    home, runtime = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    runtime.mkdir()
    svc = serve(service_env(tmp_path, HOME=str(home), XDG_RUNTIME_DIR=str(runtime)))
    wait_until(lambda: "worker started" in svc.output(), what="worker started")
    assert requests.get(svc.url + "/healthz", timeout=5).status_code == 200
    assert list(home.iterdir()) == [] and list(runtime.iterdir()) == []


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"WEBHOOK_APP_MODE": "enforce"}, "WEBHOOK_APP_MODE: enforce needs CL_CLIENT_ID"),
        ({"WEBHOOK_APP_MAX_BODY_BYTES": "big"}, "WEBHOOK_APP_MAX_BODY_BYTES"),
        ({"CL_WEBHOOK_SECRETS": "a:s3cr3t-value,,"}, "CL_WEBHOOK_SECRETS"),
    ],
)
def test_bad_configuration_is_one_line_without_traceback(tmp_path, env, needle):
    full = {**base_env(), "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", **env}
    r = subprocess.run(
        [sys.executable, "-m", "webhook_app", "serve"], env=full, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr
    assert "s3cr3t-value" not in r.stderr


@pytest.mark.parametrize("value", ["main:", "main:x"])
def test_an_empty_or_short_webhook_secret_stops_the_service_at_start(tmp_path, value):
    full = {
        **base_env(),
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "CL_WEBHOOK_SECRETS": value,
    }
    r = subprocess.run(
        [sys.executable, "-m", "webhook_app", "serve"], env=full, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert "CL_WEBHOOK_SECRETS" in line and "Traceback" not in r.stderr


def test_a_password_given_as_a_url_parameter_never_reaches_the_logs(tmp_path):
    # An unreachable PostgreSQL: the pool warns, the worker waits; its password is nowhere.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pw = "pw-in-query-0123456789"
    env = {
        **base_env(),
        "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
        "WEBHOOK_APP_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/test?password={pw}&connect_timeout=1",
        "WEBHOOK_APP_DB_TIMEOUT": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "webhook_app", "serve", "--bind", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, _ = proc.communicate(timeout=40)
    assert out.strip()  # it said something (banner, warnings, or the reason it stopped)
    assert pw not in out


def test_twenty_slow_clients_do_not_stop_a_signed_delivery_of_the_default_serve(serve, tmp_path):
    """`serve` with its defaults (2 gunicorn workers) and nothing in front: 20 connections each
    sending its headers and then a body one byte every 0.5 s must not keep a signed delivery
    from its answer for more than a second."""
    svc = serve(service_env(tmp_path))
    port = int(svc.url.rsplit(":", 1)[1])
    slow = []
    body = order_body("ordSlow01")
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        head = (
            "POST /webhooks/commercelayer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"X-CommerceLayer-Topic: orders.place\r\nContent-Length: {len(body)}\r\n"
        )
        s.sendall(head.encode() + b"X-CommerceLayer-Signature: x\r\n\r\n" + body[:10])
        slow.append(s)
    try:
        time.sleep(0.5)
        for s in slow:
            s.sendall(body[10:11])  # still trickling
        good = order_body("ordFast01")
        started = time.monotonic()
        r = requests.post(svc.url + "/webhooks/commercelayer", data=good, headers=signed_headers(good), timeout=10)
        seconds = time.monotonic() - started
        assert r.status_code == 202, r.text
        assert seconds < 1.0, seconds
        (ARTIFACTS).mkdir(exist_ok=True)
        (ARTIFACTS / "slow-clients.json").write_text(json.dumps({"slow_clients": 20, "answer_seconds": seconds}))
    finally:
        for s in slow:
            s.close()


def _raw(port, data, timeout=10):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_the_serve_front_passes_chunked_bodies_and_keeps_the_limits(serve, tmp_path):
    svc = serve(service_env(tmp_path))
    port = int(svc.url.rsplit(":", 1)[1])
    body = order_body("ordChunk1")
    h = signed_headers(body)
    head = "POST /webhooks/commercelayer HTTP/1.1\r\nHost: t\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100]) for i in range(0, len(body), 100))
    out = _raw(
        port, (head + "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n").encode() + chunked + b"0\r\n\r\n"
    )
    assert b" 202 " in out.split(b"\r\n\r\n")[-2] or b"HTTP/1.1 202" in out, out[:300]
    out = _raw(port, (head + "Content-Length: 2000000\r\n\r\n").encode())
    assert out.startswith(b"HTTP/1.1 413"), out[:200]
    big = b"400000\r\n" + b" " * 0x400000 + b"\r\n0\r\n\r\n"
    out = _raw(port, (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + big)
    assert out.startswith(b"HTTP/1.1 413"), out[:200]
    out = _raw(port, (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"zz\r\n{}\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400") and b'"errors"' in out, out[:200]
    assert requests.get(svc.url + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("command", ["serve", "web"])
def test_without_a_webhook_secret_the_service_says_so_and_is_not_ready(serve, tmp_path, command):
    """`web` (the image's default command) and `serve` with no CL_WEBHOOK_SECRETS start (the
    webhooks may be registered after the deploy), but say why on one line at start and answer
    /readyz with 503 and the reason, instead of looking healthy while refusing every delivery."""
    env = service_env(tmp_path)
    del env["CL_WEBHOOK_SECRETS"]
    svc = serve(env, command)
    ready = requests.get((svc.operator_url or svc.url) + "/readyz", timeout=5)  # serve: the operator address
    assert ready.status_code == 503, ready.text
    reason = ready.json()["checks"]["webhook_secrets"]
    assert reason.startswith("no webhook secret configured: set CL_WEBHOOK_SECRETS"), reason
    assert send(svc.url, order_body("ordNOSECRET")).status_code == 401
    said = [line for line in svc.output().splitlines() if "no webhook secret configured" in line]
    assert len(said) >= 1 and "CL_WEBHOOK_SECRETS" in said[0]
    if command == "serve":  # the banner's own line (the web child logs it too)
        assert any(line.startswith("  webhook secrets: NOT READY: no webhook secret configured") for line in said)
    svc.stop()
    svc = serve(service_env(tmp_path), command)
    ready = requests.get((svc.operator_url or svc.url) + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["checks"]["webhook_secrets"] == "main"
