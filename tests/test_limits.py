"""Request limits, against the real server: `webhook-app web` (gunicorn, the app's own defaults).

Raw sockets, because the point is what happens on the wire: whether the body is read at all,
when the answer comes, who answers (gunicorn's HTML or the app's JSON). After every abusive
request the service must still answer `/healthz` and its process must still be running.

| what                           | limit (default)                          | answer                          |
|--------------------------------|------------------------------------------|---------------------------------|
| body, declared Content-Length  | WEBHOOK_APP_MAX_BODY_BYTES = 1 MiB       | 413 at once, body never read    |
| body, chunked                  | the same 1 MiB, counted while reading    | 413 once the limit is passed    |
| JSON nesting                   | WEBHOOK_APP_MAX_JSON_DEPTH = 64          | 400 (500 000 deep too, no crash)|
| JSON numbers                   | the 64-bit float range (308 digits)      | 400                             |
| request line                   | gunicorn limit_request_line = 4094 bytes | 414 (gunicorn)                  |
| one header field               | limit_request_field_size = 8190 bytes    | 431 (gunicorn)                  |
| number of header fields        | limit_request_fields = 100               | 431 (gunicorn)                  |
| Content-Length + chunked both  | refused (request smuggling)              | 400 (gunicorn)                  |
| malformed Content-Length, NUL  | refused                                  | 400 (gunicorn)                  |

Nothing refused here is stored. Slow clients (slow-loris) are nginx's job: tests/test_deploy.py
shows a bare sync worker blocked and the nginx front not.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from support import SECRET, signed_headers
from support.builders import order_body
from support.procs import Service, free_port, wait_http

from webhook_app.signing import sign

pytestmark = pytest.mark.e2e
LIMIT = 1024 * 1024  # the default WEBHOOK_APP_MAX_BODY_BYTES, the same as nginx's client_max_body_size
URL = "/webhooks/commercelayer"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    sent: int = 0  # body bytes the client managed to send
    errors: list[str] = field(default_factory=list)

    def json(self):
        return json.loads(self.body)


@dataclass
class Server:
    port: int
    svc: Service
    db: str

    def stored(self) -> int:
        with sqlite3.connect(self.db) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])

    def healthy(self) -> bool:
        a = exchange(self.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        return a.status == 200 and self.svc.proc.poll() is None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    env = {
        "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp / 'limits.db'}",
        "WEBHOOK_APP_LOG_LEVEL": "INFO",
    }
    port = free_port()
    svc = Service(["web", "--bind", f"127.0.0.1:{port}", "--workers", "2"], env, tmp / "web.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=svc.proc)
        yield Server(port, svc, str(tmp / "limits.db"))
    finally:
        svc.stop()


def exchange(port: int, head: bytes, body: Iterable[bytes] = (), *, timeout: float = 10.0) -> Answer:
    """Send `head`, then `body` piece by piece from a thread (the server may answer and close
    before it has all of it), and read the answer until the server closes the connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    started = time.monotonic()
    errors: list[str] = []
    sent = [0]

    def send() -> None:
        try:
            for piece in body:
                sock.sendall(piece)
                sent[0] += len(piece)
        except OSError as exc:  # the server answered and closed: expected for refusals
            errors.append(type(exc).__name__)

    with sock:
        sock.sendall(head)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        raw = b""
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except ConnectionResetError:
            errors.append("reset while reading")
        seconds = time.monotonic() - started
        sender.join(timeout)
    head_part, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    assert lines and lines[0].startswith("HTTP/1."), f"no HTTP answer: {raw[:200]!r} {errors}"
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Answer(int(lines[0].split()[1]), headers, payload, seconds, sent[0], errors)


def request_head(
    body_length: int | None = None,
    *,
    body: bytes = b"{}",
    chunked: bool = False,
    extra: str = "",
    target: str = URL,
    method: str = "POST",
) -> bytes:
    headers = signed_headers(body)
    lines = [f"{method} {target} HTTP/1.1", "Host: limits.test", *(f"{k}: {v}" for k, v in headers.items())]
    if body_length is not None:
        lines.append(f"Content-Length: {body_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


def chunks(total: int, size: int = 64 * 1024, fill: bytes = b" ") -> Iterable[bytes]:
    left = total
    while left > 0:
        n = min(size, left)
        yield f"{n:x}\r\n".encode() + fill * n + b"\r\n"
        left -= n
    yield b"0\r\n\r\n"


def assert_app_refusal(a: Answer, status: int) -> None:
    assert a.status == status, (a.status, a.body[:300])
    assert a.headers["content-type"] == "application/json"
    assert a.json()["errors"][0]["status"] == str(status)


# --- the body -----------------------------------------------------------------------------------


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(server):
    """Content-Length of limit + 1 (and of 1 TB), and no body sent at all: the app answers 413
    from the header alone, at once (not after gunicorn's 30 s timeout), and stores nothing."""
    before = server.stored()
    for length in (LIMIT + 1, 10**12):
        a = exchange(server.port, request_head(length))
        assert_app_refusal(a, 413)
        assert a.seconds < 2, a.seconds
        assert str(LIMIT) in a.json()["errors"][0]["detail"]
    assert server.stored() == before and server.healthy()


def test_a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_413(server):
    """The limit is inclusive: a signed document of exactly 1 MiB is accepted (202); the same
    document one byte longer is 413 (and not stored)."""
    body = order_body("ordLIMIT01", pad_to=LIMIT)
    assert len(body) == LIMIT
    before = server.stored()
    a = exchange(server.port, request_head(LIMIT, body=body), [body])
    assert a.status == 202, a.body[:300]
    longer = order_body("ordLIMIT02", pad_to=LIMIT + 1)
    a = exchange(server.port, request_head(LIMIT + 1, body=longer), [longer])
    assert_app_refusal(a, 413)
    assert server.stored() == before + 1 and server.healthy()


def test_a_chunked_body_over_the_limit_is_413(server):
    """Transfer-Encoding: chunked, no Content-Length: the app counts while it reads and answers
    413 once the body passes the limit: for limit + 1 bytes, and for 32 MiB, where the answer
    comes while the client is still sending and the rest is never read (the client's send
    fails). Nothing is stored."""
    before = server.stored()
    a = exchange(server.port, request_head(chunked=True), chunks(LIMIT + 1))
    assert_app_refusal(a, 413)
    a = exchange(server.port, request_head(chunked=True), chunks(32 * LIMIT))
    assert_app_refusal(a, 413)
    assert a.sent < 32 * LIMIT and a.errors, (a.sent, a.errors)
    assert server.stored() == before and server.healthy()


def in_chunks(body: bytes, size: int) -> list[bytes]:
    return [
        f"{len(body[i : i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n" for i in range(0, len(body), size)
    ] + [b"0\r\n\r\n"]


def test_a_chunked_body_within_the_limit_is_accepted(server):
    """Chunked bodies are not refused as such: a signed document sent in 1 KiB chunks is 202,
    and so is one of exactly the limit (1 MiB) sent in 64 KiB chunks."""
    body = order_body("ordCHUNK01")
    a = exchange(server.port, request_head(chunked=True, body=body), in_chunks(body, 1024))
    assert a.status == 202, a.body[:300]
    body = order_body("ordCHUNK02", pad_to=LIMIT)
    a = exchange(server.port, request_head(chunked=True, body=body), in_chunks(body, 64 * 1024))
    assert a.status == 202, a.body[:300]


# --- the JSON inside ----------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    """A JSON:API document whose nesting is `depth` levels in all (the document adds 3)."""
    inner = depth - 3
    return (
        b'{"data":{"type":"orders","id":"deep%d","attributes":{"a":' % depth
        + b"[" * inner
        + b"1"
        + b"]" * inner
        + b"}}}"
    )


def post(server: Server, body: bytes) -> Answer:
    return exchange(server.port, request_head(len(body), body=body), [body])


def test_json_nesting_over_the_limit_is_400(server):
    """64 levels are accepted (202); 65 are 400 naming the limit; 500 000 levels (1 MB of
    brackets, far past Python's recursion limit) are 400 as well, and no worker dies."""
    assert post(server, nested(64)).status == 202
    a = post(server, nested(65))
    assert_app_refusal(a, 400)
    assert "deeper than 64" in a.json()["errors"][0]["detail"]
    deep = b"[" * 500_000 + b"]" * 500_000
    assert_app_refusal(post(server, deep), 400)
    assert server.healthy()


def test_a_number_too_long_to_convert_is_400(server):
    """What the README says of JSON numbers: an integer of 308 digits is accepted, one of 309
    (past the 64-bit float range, about 1.8e308) is 400, as is 1e400 and a 5000-digit one, never
    a 500. An integer past 2**64 is accepted (the parser reads it as a float) and its body is
    stored byte for byte."""

    def doc(oid: str, number: bytes) -> bytes:
        return b'{"data":{"type":"orders","id":"' + oid.encode() + b'","attributes":{"n":' + number + b"}}}"

    for oid, number in (("big308", b"9" * 308), ("two64", str(2**64).encode()), ("neg64", str(-(2**63) - 1).encode())):
        assert post(server, doc(oid, number)).status == 202, oid
    with sqlite3.connect(server.db) as conn:
        [(stored,)] = conn.execute("SELECT body FROM deliveries WHERE resource_id = 'two64'").fetchall()
    assert bytes(stored) == doc("two64", str(2**64).encode())
    for oid, number in (("big309", b"9" * 309), ("e400", b"1e400"), ("big5000", b"9" * 5000)):
        before = server.stored()
        a = post(server, doc(oid, number))
        assert_app_refusal(a, 400)
        assert "infinity" in a.json()["errors"][0]["detail"] and server.stored() == before
    assert server.healthy()


# --- what gunicorn refuses before the app sees anything -----------------------------------------


def assert_gunicorn_refusal(a: Answer, *statuses: int) -> None:
    """Refused by gunicorn's parser, before the app: the JSON error with its fixed detail
    (`front_worker.JsonRefusals`, for `web`'s worker class too), not the app's own answer."""
    import json

    from webhook_app.front_worker import _DETAILS

    assert a.status in statuses, (a.status, a.body[:300])
    assert a.headers.get("content-type") == "application/json", a.headers
    [error] = json.loads(a.body)["errors"]
    assert error["status"] == str(a.status) and error["detail"] == _DETAILS[a.status], error


def test_a_request_line_over_4094_bytes_is_414(server):
    """gunicorn's limit_request_line (4094): a longer request line is refused with 414 before
    the app is called; one just under it reaches the app (404 for an unknown path)."""
    before = server.stored()
    a = exchange(server.port, request_head(2, target=URL + "?" + "a" * 5000) + b"{}")
    assert_gunicorn_refusal(a, 414, 400)
    under = exchange(server.port, f"GET /{'a' * 3900} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert under.status == 404
    assert server.stored() == before and server.healthy()


def test_a_header_field_over_8190_bytes_is_refused(server):
    """gunicorn's limit_request_field_size (8190): an X-Fill header of 9000 bytes is refused
    (431 Request Header Fields Too Large; 400 is accepted too); 8000 bytes pass."""
    before = server.stored()
    a = exchange(server.port, request_head(2, extra=f"X-Fill: {'a' * 9000}\r\n") + b"{}")
    assert_gunicorn_refusal(a, 431, 400)
    ok = exchange(server.port, f"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Fill: {'a' * 8000}\r\n\r\n".encode())
    assert ok.status == 200
    assert server.stored() == before and server.healthy()


def test_more_than_100_header_fields_are_refused(server):
    """gunicorn's limit_request_fields (100): 150 header fields are refused (431, or 400);
    90 pass."""
    many = "".join(f"X-H{n}: v\r\n" for n in range(150))
    a = exchange(server.port, request_head(2, extra=many) + b"{}")
    assert_gunicorn_refusal(a, 431, 400)
    some = "".join(f"X-H{n}: v\r\n" for n in range(90))
    assert exchange(server.port, f"GET /healthz HTTP/1.1\r\nHost: t\r\n{some}\r\n".encode()).status == 200
    assert server.healthy()


def test_content_length_and_chunked_together_are_refused(server):
    """Both framings at once is the request-smuggling shape: gunicorn refuses it (400) rather
    than pick one. Nothing is stored."""
    body = order_body("ordSMUGGLE")
    before = server.stored()
    head = request_head(len(body), body=body, chunked=True)
    a = exchange(server.port, head, chunks(len(body)))
    assert_gunicorn_refusal(a, 400)
    assert server.stored() == before and server.healthy()


@pytest.mark.parametrize(
    "extra",
    [
        "Content-Length: -1\r\n",
        "Content-Length: 1e3\r\n",
        "Content-Length: 2\r\nContent-Length: 3\r\n",
        "X-Nul: a\x00b\r\n",
    ],
)
def test_malformed_framing_and_header_values_are_400(server, extra):
    """A negative, non-decimal or repeated Content-Length, and a NUL in a header value, are
    refused by gunicorn with 400 before the app sees them."""
    before = server.stored()
    head = request_head(None, extra=extra)
    a = exchange(server.port, head + b"{}")
    assert_gunicorn_refusal(a, 400)
    assert server.stored() == before and server.healthy()


def test_the_signature_is_checked_on_exactly_the_bytes_received(server):
    """A body cut short by a declared length smaller than what is sent is verified as cut: the
    signature of the whole body does not match (401) and nothing is stored."""
    body = order_body("ordSHORT01")
    before = server.stored()
    head = request_head(len(body) - 10, body=body)
    a = exchange(server.port, head + body)
    assert a.status == 401 and sign(body, secret=SECRET) not in a.body.decode()
    assert server.stored() == before and server.healthy()


# --- what the edge publishes at all -----------------------------------------------------------------


def nginx_route(text: str, path: str) -> str:
    """The location block nginx picks for `path`: an exact match, else the first regex that
    matches, else the longest prefix (nginx's rule; no `^~` locations here)."""
    from support.deploy_tools import nginx_directives

    locations = {blocks[-1] for blocks, _, _ in nginx_directives(text) if blocks and blocks[-1].startswith("location")}
    assert not any(loc.startswith("location ^~") for loc in locations)
    for loc in locations:
        if loc == f"location = {path}":
            return loc
    for loc in sorted(locations):
        if loc.startswith("location ~ ") and re.search(loc.removeprefix("location ~ "), path):
            return loc
    prefixes = [loc for loc in locations if loc.split()[1] not in ("=", "~", "~*")]
    return max((loc for loc in prefixes if path.startswith(loc.split()[1])), key=len)


def test_the_edge_proxies_only_the_intake_and_private_health():
    """deploy/nginx/webhook-app.conf passes only two locations to the app: the intake (POST only)
    and /healthz|/readyz (private addresses only). /metrics, /admin and everything else fall to
    `location /`, which nginx answers itself with a JSON 404. The k8s ingress example publishes
    the intake path alone (Exact)."""
    from support.deploy_tools import K8S, NGINX, load_yaml, nginx_directives, nginx_values

    text = (NGINX / "webhook-app.conf").read_text()
    proxied = {blocks[-1] for blocks, name, _ in nginx_directives(text) if name == "proxy_pass"}
    assert proxied == {"location = /webhooks/commercelayer", "location ~ ^/(healthz|readyz)$"}
    assert nginx_values(text, "limit_except", context="location = /webhooks/commercelayer") == [["POST"]]
    assert ["all"] in nginx_values(text, "deny", context="location ~ ^/(healthz|readyz)$")
    for path in (
        "/metrics",
        "/admin",
        "/admin/",
        "/admin/deliveries",
        "/admin/view/deliveries/1",
        "/webhooks/commercelayer/",
        "/webhooks/commercelayer/../../metrics",
        "/healthz/x",
        "/",
    ):
        assert nginx_route(text, path) == "location /", path
    assert nginx_values(text, "return", context="location /")[0][0] == "404"
    ingress = load_yaml(K8S / "ingress.example.yaml")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/webhooks/commercelayer", "Exact")]


@pytest.mark.parametrize(
    "body",
    [
        [b"zz\r\n{}\r\n0\r\n\r\n"],  # a chunk size that is not hex
        [b"2\r\n{}XX0\r\n\r\n"],  # a chunk without its CRLF terminator
        [b"2;\x01=\x02\r\n{}\r\n0\r\n\r\n"],  # a chunk extension with control characters
    ],
    ids=["bad-size", "no-terminator", "bad-extension"],
)
def test_a_malformed_chunked_body_is_400_not_a_traceback(server, body):
    before = server.stored()
    a = exchange(server.port, request_head(chunked=True), body)
    assert_app_refusal(a, 400)
    assert b"Traceback" not in a.body
    assert server.stored() == before and server.healthy()
