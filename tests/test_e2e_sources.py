"""Only Commerce Layer let in, end to end: `webhook-app web` and `serve` as real processes.

`WEBHOOK_APP_ALLOWED_SOURCES` refuses every other source with 403 before a body is read, and
nothing is stored; `WEBHOOK_APP_TRUSTED_PROXIES` says whose `X-Forwarded-For` is believed, so a
delivery through a trusted proxy is accepted and the same header from anyone else is ignored.
127.0.0.2 is loopback too: a second client address on this machine. Raw sockets, so that the
client's address and what is (not) sent are the test's to choose. The module's own cases are in
tests/test_sources.py.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import pytest
import requests
from support import SECRET, signed_headers
from support.builders import order_body
from support.procs import Service, free_port, wait_http

from webhook_app.sources import COMMERCELAYER_EU, COMMERCELAYER_US

pytestmark = pytest.mark.e2e
URL = "/webhooks/commercelayer"
EU, US = COMMERCELAYER_EU[1], COMMERCELAYER_US[2]
#: a declared body the server must not wait for: under the 1 MiB limit, and never sent
UNSENT = 900_000


def start(tmp_path: Path, command: str, **env: str) -> Service:
    port = free_port()
    args = [command, "--bind", f"127.0.0.1:{port}"] + (["--workers", "1"] if command == "web" else [])
    svc = Service(
        args,
        {
            "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
            "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / f'{command}.db'}",
            "WEBHOOK_APP_LOG_LEVEL": "INFO",
            **env,
        },
        tmp_path / f"{command}.log",
    )
    svc.port = port
    svc.db = tmp_path / f"{command}.db"
    wait_http(f"http://127.0.0.1:{port}/healthz", proc=svc.proc)
    return svc


@pytest.fixture
def services():
    started: list[Service] = []
    yield started
    for svc in reversed(started):
        svc.stop()


def head(body_length: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {URL} HTTP/1.1", "Host: t", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join([*lines, f"Content-Length: {body_length}", "Connection: close"]) + "\r\n\r\n").encode()


def exchange(port: int, data: bytes, *, source: str = "127.0.0.1") -> tuple[int, bytes, float]:
    """Send `data` from `source`; (status, answer body, seconds until the whole answer came).
    The connection stays open meanwhile: an answer that arrives came without waiting for more."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0)) as s:
        s.sendall(data)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            assert chunk, f"closed without an answer after {time.monotonic() - started:.1f} s: {got!r}"
            got += chunk
        head_bytes, _, rest = got.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head_bytes.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk, "the answer was cut short"
            rest += chunk
        elapsed = time.monotonic() - started
    return int(head_bytes.split(b" ", 2)[1]), rest, elapsed


def deliver(port: int, order_id: str, *, source: str = "127.0.0.1", **headers: str) -> int:
    body = order_body(order_id)
    status, _, _ = exchange(port, head(len(body), {**signed_headers(body), **headers}) + body, source=source)
    return status


def refused_before_the_body(port: int, *, source: str = "127.0.0.1", **headers: str) -> float:
    """Only the head, declaring UNSENT bytes: 403 at once (a server reading the body would wait)."""
    status, answer, elapsed = exchange(port, head(UNSENT, {**signed_headers(b"{}"), **headers}), source=source)
    assert status == 403, answer
    assert b"Forbidden" in answer and source.encode() not in answer
    return elapsed


def stored(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT order_id FROM deliveries")}


def rejections(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    line = 'webhook_app_intake_rejections_total{reason="source_not_allowed"} '
    return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


# --- web -------------------------------------------------------------------------------------------


def test_web_refuses_a_source_outside_the_list_believes_only_a_trusted_proxy(tmp_path, services):
    web = start(
        tmp_path,
        "web",
        WEBHOOK_APP_ALLOWED_SOURCES="commercelayer",
        WEBHOOK_APP_TRUSTED_PROXIES="127.0.0.1/32",
    )
    services.append(web)
    # 127.0.0.2 is not in the list (and not a trusted proxy): 403, nothing stored, counted
    assert deliver(web.port, "ordSrcWeb1", source="127.0.0.2") == 403
    assert refused_before_the_body(web.port, source="127.0.0.2") < 2
    # a spoofed X-Forwarded-For from that untrusted peer is its own claim: ignored
    assert deliver(web.port, "ordSrcWeb2", source="127.0.0.2", **{"X-Forwarded-For": EU}) == 403
    assert stored(web.db) == set()
    assert rejections(f"http://127.0.0.1:{web.port}") == 3
    # through the trusted proxy (127.0.0.1) with Commerce Layer's address: accepted
    assert deliver(web.port, "ordSrcWeb3", **{"X-Forwarded-For": EU}) == 202
    assert deliver(web.port, "ordSrcWeb4", **{"X-Forwarded-For": f"198.51.100.7, {US}"}) == 202
    # walked from the right: the first address that is not a trusted proxy is the source
    assert deliver(web.port, "ordSrcWeb5", **{"X-Forwarded-For": f"{EU}, 198.51.100.7"}) == 403
    assert deliver(web.port, "ordSrcWeb6") == 403  # the proxy itself, saying nothing, is not Commerce Layer
    assert stored(web.db) == {"ordSrcWeb3", "ordSrcWeb4"}
    log = web.output()
    assert '"source":"127.0.0.2"' in log and '"source":"198.51.100.7"' in log
    assert "ordSrcWeb1" not in log  # refused deliveries are logged without their body


def test_web_lets_in_a_cidr_and_is_open_by_default(tmp_path, services):
    web = start(tmp_path, "web", WEBHOOK_APP_ALLOWED_SOURCES="commercelayer-eu, 127.0.0.0/8")
    services.append(web)
    assert deliver(web.port, "ordSrcCidr1") == 202
    assert deliver(web.port, "ordSrcCidr2", source="127.0.0.2") == 202
    assert stored(web.db) == {"ordSrcCidr1", "ordSrcCidr2"}
    web.stop()
    services.remove(web)
    (tmp_path / "open").mkdir()
    open_web = start(tmp_path / "open", "web")
    services.append(open_web)
    assert deliver(open_web.port, "ordSrcOpen", source="127.0.0.2", **{"X-Forwarded-For": "198.51.100.7"}) == 202


# --- serve: its front refuses first, before any body is read -------------------------------------


def test_serve_refuses_at_the_front_before_the_body_and_accepts_the_listed_source(tmp_path, services):
    svc = start(tmp_path, "serve", WEBHOOK_APP_ALLOWED_SOURCES="commercelayer, 127.0.0.1/32")
    services.append(svc)
    # 127.0.0.1 is listed: the front passes it on with its own X-Forwarded-For, which the intake
    # (behind the front's Unix socket, a trusted hop) judges the same way
    assert deliver(svc.port, "ordSrcServe1") == 202
    # 127.0.0.2 is not: 403 from the front with no byte of the body read or awaited
    assert refused_before_the_body(svc.port, source="127.0.0.2") < 2
    assert deliver(svc.port, "ordSrcServe2", source="127.0.0.2") == 403
    # the front drops a client's X-Forwarded-For: a spoof changes nothing
    assert deliver(svc.port, "ordSrcServe3", source="127.0.0.2", **{"X-Forwarded-For": EU}) == 403
    assert deliver(svc.port, "ordSrcServe4", source="127.0.0.2", **{"X-Forwarded-For": "127.0.0.1"}) == 403
    assert stored(svc.db) == {"ordSrcServe1"}
    # /healthz is not the intake: open to all
    status, _, _ = exchange(svc.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", source="127.0.0.2")
    assert status == 200
    time.sleep(0.2)
    assert "source not allowed" in svc.output()  # the front's refusal line (counted, once per 10 s)


def test_serve_behind_a_trusted_proxy_believes_its_x_forwarded_for_only(tmp_path, services):
    svc = start(
        tmp_path,
        "serve",
        WEBHOOK_APP_ALLOWED_SOURCES="commercelayer",
        WEBHOOK_APP_TRUSTED_PROXIES="127.0.0.1/32",
        WEBHOOK_APP_FORWARDED_HOPS="1",
        FORWARDED_ALLOW_IPS="127.0.0.1",
    )
    services.append(svc)
    assert deliver(svc.port, "ordSrcProxy1", **{"X-Forwarded-For": EU}) == 202  # the proxy says: Commerce Layer
    assert deliver(svc.port, "ordSrcProxy2") == 403  # the proxy's own address is not listed
    assert deliver(svc.port, "ordSrcProxy3", **{"X-Forwarded-For": f"{EU}, 198.51.100.7"}) == 403
    # the same header from a peer that is not the proxy: ignored, before the body
    assert deliver(svc.port, "ordSrcProxy4", source="127.0.0.2", **{"X-Forwarded-For": EU}) == 403
    assert refused_before_the_body(svc.port, source="127.0.0.2", **{"X-Forwarded-For": EU}) < 2
    assert stored(svc.db) == {"ordSrcProxy1"}
