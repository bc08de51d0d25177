"""The buffering front `serve` runs inside each gunicorn worker: slow clients cost a socket, never a worker.

gunicorn's sync workers serve one request at a time, and a client that trickles its headers or
body holds a worker the whole time: with `serve`'s two workers, two slow connections stopped the
service. In production nginx reads each request completely before gunicorn sees it; `serve`, the
single-host setup, does the same inside each of its gunicorn workers instead (the worker class,
`webhook_app/front_worker.py`, runs this front on uvloop's event loop and the Flask app, synchronously,
on each complete request: no second HTTP hop, no second process):

- it reads the request head within `HEAD_TIMEOUT` and each piece of the body within
  `BODY_TIMEOUT` (and the whole request within `REQUEST_TIMEOUT`), in one event loop, so
  thousands of idle or slow connections cost memory, not workers;
- only a complete request (de-chunked, with its `Content-Length`) reaches the application; the
  client gets `SEND_TIMEOUT` to take the answer, and its connection is kept for the next request
  when it asks for it (HTTP/1.1 keep-alive; idle, it gets `HEAD_TIMEOUT` to send the next head);
- a `Content-Length` above the body limit reaches the app without its body (the app answers 413
  from the header, and the connection closes); a chunked body past the limit is answered 413
  here; malformed framing 400 (a head line without its CR, a chunk size that is not plain hex,
  a Transfer-Encoding in an HTTP/1.0 request); an HTTP version other than 1.1 and 1.0 505;
- one client cannot take the front: connections are limited per client address (an IPv6
  client's /64) and in total (below the file-descriptor limit), the bytes held for unfinished
  requests (a head counted as it arrives, a body from its declared length or chunk by chunk) are
  capped (503 beyond it), refusals are counted (by status on /metrics, through `serve`'s
  `refused` hook) and logged once per `LOG_INTERVAL`, and running out of descriptors pauses
  accepting instead of spinning. Each gunicorn worker has its share of these
  limits (`Limits.share`): the connections in all and the buffer divided by the number of
  workers, the per-client cap each worker's own;
- on the public listener only the intake and `/healthz` are served; the operator routes
  (`/readyz`, `/metrics`, `/admin`) answer on the operator listener (`WEBHOOK_APP_OPERATOR_BIND`);
- the client's `X-Forwarded-*`, `Forwarded` and any header with an underscore (`SCRIPT_NAME`) are
  dropped, and the front sets `X-Forwarded-For`/`X-Forwarded-Proto` itself. A peer in
  `FORWARDED_ALLOW_IPS` keeps its own forwarded headers when `WEBHOOK_APP_FORWARDED_HOPS` > 0 (a
  proxy in front of `serve`).

gunicorn's own limits (request line, header fields) still apply: its parser reads each buffered
request into the WSGI environ. The listening sockets are made by `serve` (webhook_app/runtime.py)
and inherited by gunicorn, so connections made while gunicorn (re)starts wait in their backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import ipaddress
import json
import logging
import re
import signal
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from webhook_app.sources import REFUSED_DETAIL, Sources, forwarded_for

log = logging.getLogger("webhook_app.front")

HEAD_LIMIT = 64 * 1024  # gunicorn refuses smaller heads with 414/431 behind us
HEAD_TIMEOUT = 5.0  # the head; on a kept connection, also the wait for the next one
BODY_TIMEOUT = 5.0  # between two reads of the body
REQUEST_TIMEOUT = 30.0  # the whole request
MAX_CHUNKS = 4096  # chunks of one chunked body: 1 MiB in 256-byte chunks; Commerce Layer sends Content-Length
CHUNKS_PER_TURN = 64  # chunks read before the other connections get a turn
SEND_TIMEOUT = 5.0
LINGER_SECONDS = 2.0  # after a refusal, how long to read and drop what the client still sends
LINGER_BYTES = 8 * 1024 * 1024
FD_HEADROOM = 64  # descriptors kept for the rest of the process (logs, the loop, the database)
CONNECTIONS_CAP = 8192  # the automatic connection limit never goes above this
LOG_INTERVAL = 10.0  # refusals: one counted line per interval
ACCEPT_PAUSE = 0.1  # out of descriptors: stop accepting this long
BALANCE_PAUSE = 0.001  # several workers: after admitting, stop accepting this long per connection held...
BALANCE_PAUSE_MAX = 0.01  # ...at most this long
RETRY_AFTER = 1  # seconds, on a 503 from the front
TRIM_AFTER = 4 * 1024 * 1024  # buffered bytes given back to the system once this many were held
INTAKE_PATH = b"/webhooks/commercelayer"
PUBLIC_PATHS = frozenset({INTAKE_PATH, b"/healthz"})
# agency mode: `/webhooks/commercelayer/<slug>`, a slug as organizations.SLUG has it (the app
# answers an unknown one)
_ORG_INTAKE = re.compile(re.escape(INTAKE_PATH) + rb"/[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def is_intake(path: bytes) -> bool:
    """The intake's path, or an organization's (agency mode)."""
    return path == INTAKE_PATH or _ORG_INTAKE.fullmatch(path) is not None


def is_public(path: bytes) -> bool:
    """Served on the public listener: the intake (an organization's too) and `/healthz`."""
    return path in PUBLIC_PATHS or is_intake(path)


_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"expect", b"transfer-encoding", b"content-length", b"te"}
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
# RFC 9112 7.1.1 chunk extensions, as gunicorn checks them
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t !-~\x80-\xff])*"'
_CHUNK_EXT = re.compile(rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*")
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Refused(Exception):
    def __init__(self, status: int, title: str, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.retry_after = status, title, detail, retry_after

    def answer(self) -> bytes:
        return error_answer(self.status, self.title, self.detail, retry_after=self.retry_after)


def unavailable(detail: str) -> Refused:
    return Refused(503, "Service Unavailable", detail, retry_after=RETRY_AFTER)


def error_answer(status: int, title: str, detail: str, *, retry_after: int | None = None) -> bytes:
    body = json.dumps({"errors": [{"status": str(status), "title": title, "detail": detail}]}).encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    return (
        f"HTTP/1.1 {status} {title}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{retry}Connection: close\r\n\r\n"
    ).encode() + body


BUSY = error_answer(503, "Service Unavailable", "too many connections; try again shortly", retry_after=RETRY_AFTER)


def connection_budget(configured: int, nofile: int) -> int:
    """How many client connections one process keeps open at once: `configured` (0: as many as
    fit), never more than its `nofile` descriptors (one per connection) with `FD_HEADROOM` to spare."""
    fit = max(8, nofile - FD_HEADROOM)
    return min(configured or CONNECTIONS_CAP, fit)


def trusted_networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """`FORWARDED_ALLOW_IPS` as gunicorn reads it: addresses or networks, commas between; `*` is all."""
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        if part == "*":
            out += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
        else:
            out.append(ipaddress.ip_network(part, strict=False))
    return tuple(out)


@dataclass(frozen=True)
class Limits:
    """What one front may hold (docs/explanation/security.md, *Limits*); `from_settings` reads
    them from the service's settings, `share` divides them among gunicorn's workers."""

    max_body: int
    max_connections: int = 1024
    client_connections: int = 64
    buffer_bytes: int = 64 * 1024 * 1024
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    sources: Sources = Sources()  # WEBHOOK_APP_ALLOWED_SOURCES: checked before an intake body is read

    @property
    def client_buffer_bytes(self) -> int:
        """One client's share of the buffer: a quarter (at least one largest request)."""
        return max(self.buffer_bytes // 4, self.max_body + HEAD_LIMIT)

    def share(self, workers: int) -> Limits:
        """One of `workers` processes' part: the connections in all and the buffer divided (at
        least eight connections and one largest request's bytes). The per-client connection cap
        is each worker's whole: the kernel hands a burst of connections to whichever worker
        accepts first, and a divided cap refused a client's 17th connection to one of 4 workers
        while the others had room (`tests/test_e2e_service.py`, 20 slow clients); a client may
        thus hold up to `workers` times the cap, each worker's share of all connections still
        bounding it."""
        n = max(1, workers)
        return replace(
            self,
            max_connections=max(8, self.max_connections // n),
            buffer_bytes=max(self.buffer_bytes // n, self.max_body + HEAD_LIMIT),
        )

    @classmethod
    def from_settings(cls, settings: Any, environ: Mapping[str, str], *, nofile: int) -> Limits:
        trusted = trusted_networks(environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1")
        return cls(
            max_body=settings.max_body_bytes,
            max_connections=connection_budget(settings.front_max_connections, nofile),
            client_connections=settings.front_client_connections,
            buffer_bytes=settings.front_buffer_bytes,
            trusted=trusted if settings.forwarded_hops > 0 else (),
            sources=settings.sources,
        )


def client_key(client: str) -> str:
    """Whose connection it is, for the per-client connection cap and buffer share: the address,
    but for IPv6 its /64 (one client is typically given a whole /64, and could otherwise take a
    share per address in it); an IPv4-mapped IPv6 address counts as its IPv4 address."""
    if ":" not in client:
        return client  # IPv4 (or "local"): nothing to parse
    try:
        ip = ipaddress.IPv6Address(client)
    except ValueError:
        return client
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"


class RefusalLog:
    """Refusals counted by reason and client, logged at most once per `interval`: a flood is one
    line every ten seconds, not one per connection."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self.reasons: Counter[str] = Counter()
        self.clients: Counter[str] = Counter()
        self.last = float("-inf")
        self.timer: asyncio.TimerHandle | None = None
        self.total = 0  # since the start

    def note(self, reason: str, client: str = "") -> None:
        self.reasons[reason] += 1
        self.total += 1
        if client:
            self.clients[client] += 1
        if self.timer is None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_at(max(loop.time(), self.last + self.interval), self.flush)

    def flush(self) -> None:
        self.timer = None
        if not self.reasons:
            return
        self.last = asyncio.get_running_loop().time()
        log.warning(
            "front refused %d connections or requests (%s)",
            sum(self.reasons.values()),
            ", ".join(f"{reason}: {n}" for reason, n in self.reasons.most_common()),
            extra={"refused": dict(self.reasons), "clients": dict(self.clients.most_common(5))},
        )
        self.reasons.clear()
        self.clients.clear()


def _malloc_trim() -> Callable[[], Any] | None:
    """glibc's malloc_trim: gives freed heap pages back to the system (else a burst of large
    bodies keeps the process's memory at its peak for good). None where there is none (musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class Conn:
    """One client connection: who, on which listener, and the bytes its request holds against the buffer."""

    __slots__ = ("client", "heading", "idle", "key", "operator", "peer", "server", "size")

    def __init__(
        self, client: str, *, key: str = "", operator: bool = True, peer: Any = None, server: Any = None
    ) -> None:
        self.client = client
        self.key = key or client  # whose share it counts in (`client_key`)
        self.operator = operator
        self.peer = peer  # the address accept() gave
        self.server = server  # the listener's own address
        self.size = 0
        self.idle = False  # a kept connection waiting for its next request
        self.heading = False  # a head is being read: every byte received counts against the buffer (`Stream`)


@dataclass
class Request:
    """A complete request as the front read it: the request line, the header lines it keeps, the
    de-chunked body, and whether the connection may serve another request after this one."""

    line: bytes
    headers: list[bytes]
    body: bytes
    keep_alive: bool
    declared: int | None = None  # a Content-Length above the limit: the body was left unread

    @property
    def method(self) -> bytes:
        return self.line.partition(b" ")[0]

    def wire(self, *, keep_alive: bool) -> bytes:
        """The request as bytes for gunicorn's parser, framed by `Content-Length`."""
        length = len(self.body) if self.declared is None else self.declared
        connection = b"Connection: keep-alive" if keep_alive else b"Connection: close"
        head = b"\r\n".join([self.line, *self.headers, b"Content-Length: %d" % length, connection])
        return head + b"\r\n\r\n" + self.body


#: the application's answer to one request, and whether the connection may stay open after it
Respond = Callable[[Request, Conn], tuple[bytes, bool]]


class Budget:
    """The bytes held for unfinished requests, in total and per client (`Limits.buffer_bytes`):
    what a head's reader received so far (`Stream`), then the head and its body."""

    def __init__(self, limits: Limits, refusals: RefusalLog) -> None:
        self.limits = limits
        self.refusals = refusals
        self.buffered = 0
        self.client_buffered: Counter[str] = Counter()
        self.peak = 0
        self._trim = _malloc_trim()
        self._trim_pending = False

    def reserve(self, held: Conn, size: int) -> None:
        key = held.key
        if (
            self.buffered + size > self.limits.buffer_bytes
            or self.client_buffered[key] + size > self.limits.client_buffer_bytes
        ):
            self.refusals.note("buffer limit", held.client)
            raise unavailable("too many unfinished requests; try again shortly")
        self.buffered += size
        self.client_buffered[key] += size
        held.size += size
        if self.buffered > self.peak:
            self.peak = self.buffered

    def settle(self, held: Conn, size: int) -> None:
        """The head is read: it holds its own `size` from now on, no longer every byte received
        while it was read (`Stream` counted those, the start of the body with them)."""
        held.heading = False
        extra = held.size - size
        if extra > 0:
            self.buffered -= extra
            self.client_buffered[held.key] -= extra
            held.size = size
        elif extra < 0:  # a reader that counts nothing (a test's)
            self.reserve(held, -extra)

    def release(self, held: Conn) -> None:
        held.heading = False
        if not held.size:
            return
        self.buffered -= held.size
        left = self.client_buffered[held.key] - held.size
        if left > 0:
            self.client_buffered[held.key] = left
        else:
            del self.client_buffered[held.key]
        held.size = 0
        if self.peak >= TRIM_AFTER and self.buffered < self.peak // 4 and not self._trim_pending:
            self._trim_pending = True
            asyncio.get_running_loop().call_later(0.5, self._give_back)

    def _give_back(self) -> None:
        self._trim_pending = False
        self.peak = self.buffered
        if self._trim is not None:
            self._trim()


class Stream(asyncio.StreamReader):
    """asyncio's StreamReader, counting what a client sends while its request head is read against
    the buffer (`Budget`): an unfinished head is memory too, up to `HEAD_LIMIT` in the reader's
    buffer before any line of it is complete, and 1,600 connections each holding one grew a
    worker by 20 MiB outside any limit (found by an attacker review). Past the buffer, the read
    fails with the same 503 as a body's. One attribute test per piece received; nothing counted
    while a body is read (its length was reserved before it was)."""

    _buffer: bytearray  # asyncio's own
    _exception: BaseException | None

    def __init__(self, budget: Budget, held: Conn, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=HEAD_LIMIT, loop=loop)
        self.budget = budget
        self.held = held

    def feed_data(self, data: bytes) -> None:  # type: ignore[override]  # the protocol passes bytes
        asyncio.StreamReader.feed_data(self, data)  # not super(): no object made per piece
        if self.held.heading:
            try:
                self.budget.reserve(self.held, len(data))
            except Refused as refused:
                self.held.heading = False
                self.set_exception(refused.with_traceback(None))  # the head's read raises it; not holding `data`

    def start_head(self) -> None:
        """Count from here on, and what the client already sent (a pipelined request) with it."""
        held = self.held
        held.heading = True
        if self._buffer:
            self.budget.reserve(held, len(self._buffer))

    def go_on(self) -> None:
        """After a refusal: count no more, and read again if `feed_data` raised it (the linger
        drops what the client still sends)."""
        self.held.heading = False
        if isinstance(self._exception, Refused):
            self._exception = None


@dataclass
class _Fields:
    """The head's fields as the front keeps them, and the framing it read from them."""

    kept: list[bytes]
    lengths: set[bytes]
    te: list[bytes]
    expect: bool = False
    close: bool = False  # `Connection: close`
    keep_alive: bool = False  # `Connection: keep-alive` (HTTP/1.0)


def _request_line(line: bytes, *, operator: bool) -> tuple[bytes, bytes, bytes]:
    """(method, path, version), or Refused: malformed, or an operator route on the public listener."""
    parts = line.split(b" ")
    if len(parts) != 3:
        raise Refused(400, "Bad Request", "malformed request line")
    if parts[2] != b"HTTP/1.1" and parts[2] != b"HTTP/1.0":
        if _VERSION.fullmatch(parts[2]):  # HTTP/1.2, HTTP/2.0: RFC 9110 15.6.6
            raise Refused(505, "HTTP Version Not Supported", "only HTTP/1.1 and HTTP/1.0 are served")
        raise Refused(400, "Bad Request", "malformed request line")
    path = parts[1].partition(b"?")[0]
    if not operator and not is_public(path):
        raise Refused(404, "Not Found", "no such route on this listener")
    return parts[0], path, parts[2]


def _hop_field(fields: _Fields, lname: bytes, value: bytes) -> None:
    value = value.strip().lower()
    if lname == b"content-length":
        fields.lengths.add(value)
    elif lname == b"transfer-encoding":
        fields.te.append(value)
    elif lname == b"expect":
        fields.expect = fields.expect or value == b"100-continue"
    elif lname == b"connection":
        tokens = {t.strip() for t in value.split(b",")}
        fields.close = fields.close or b"close" in tokens
        fields.keep_alive = fields.keep_alive or b"keep-alive" in tokens


def head_fields(lines: Sequence[bytes], *, trusted: bool) -> _Fields:
    """The header lines to pass on (no hop-by-hop field, none with `_`, no forwarded header from
    an untrusted peer), and the framing and connection fields read from the dropped ones."""
    fields = _Fields(kept=[], lengths=set(), te=[])
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise Refused(400, "Bad Request", "malformed header field")
        lname = name.lower()
        if lname in _HOP:
            _hop_field(fields, lname, value)
        elif b"_" in lname:  # SCRIPT_NAME, PATH_INFO...: gunicorn would take them from the client
            continue
        elif trusted or not (lname.startswith(b"x-forwarded-") or lname == b"forwarded"):
            fields.kept.append(line)
    return fields


def chunk_size(line: bytes) -> int:
    """A chunk-size line (without its CRLF) as RFC 9112 writes it: hex digits only (no sign, no
    `0x`, no `_`, no spaces but before an extension), then any extensions, which are dropped."""
    size, sep, ext = line.partition(b";")
    if sep:
        size = size.rstrip(b" \t")
    if not _CHUNK_SIZE.fullmatch(size):
        raise Refused(400, "Bad Request", "malformed chunk size")
    if sep and not _CHUNK_EXT.fullmatch(b";" + ext):
        raise Refused(400, "Bad Request", "malformed chunk extension")
    return int(size, 16)


class RequestReader:
    """Reads one complete request from a client's stream within the front's limits and timeouts."""

    def __init__(self, limits: Limits, budget: Budget, refusals: RefusalLog) -> None:
        self.limits = limits
        self.max_body = limits.max_body
        self.budget = budget
        self.refusals = refusals

    def trusts(self, client: str) -> bool:
        if not self.limits.trusted:
            return False
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(ip in net for net in self.limits.trusted)

    async def read_head(self, reader: asyncio.StreamReader, held: Conn) -> list[bytes]:
        """The head's lines without their CRLF; a line ending in a bare LF is malformed framing."""
        lines: list[bytes] = []
        size = 0
        async with asyncio.timeout(HEAD_TIMEOUT):
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    raise Refused(431, "Request Header Fields Too Large", "the request head is too large") from None
                size += len(line)
                if size > HEAD_LIMIT:
                    raise Refused(431, "Request Header Fields Too Large", "the request head is too large")
                held.idle = False
                if line[-2:-1] != b"\r":
                    raise Refused(400, "Bad Request", "a line of the request head does not end with CRLF")
                if len(line) == 2:
                    if not lines:
                        raise Refused(400, "Bad Request", "malformed request line")
                    pending = reader.exception()
                    if isinstance(pending, Refused):  # the piece that ended the head was past the buffer
                        raise pending
                    self.budget.settle(held, size)
                    return lines
                lines.append(line[:-2])

    async def read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, held: Conn | None = None
    ) -> Request:
        """The complete request, its body de-chunked, or Refused."""
        held = held or Conn("local")
        lines = await self.read_head(reader, held)
        _, path, version = _request_line(lines[0], operator=held.operator)
        trusted = self.trusts(held.client)
        fields = head_fields(lines[1:], trusted=trusted)
        if not trusted:
            fields.kept += [b"X-Forwarded-For: " + held.client.encode("ascii", "replace"), b"X-Forwarded-Proto: http"]
        sources = self.limits.sources  # WEBHOOK_APP_ALLOWED_SOURCES, judged as the intake will judge it
        if sources.enabled and is_intake(path) and not sources.allows(held.client, forwarded_for(fields.kept)):
            self.refusals.note("source not allowed", held.client)
            raise Refused(403, "Forbidden", REFUSED_DETAIL)  # before the body: none of it is read
        if fields.te and version != b"HTTP/1.1":  # RFC 9112 6.1: no chunked in HTTP/1.0; faulty framing
            raise Refused(400, "Bad Request", "Transfer-Encoding in an HTTP/1.0 request")
        keep_alive = not fields.close and (version == b"HTTP/1.1" or fields.keep_alive)
        body, declared = await self.read_body(reader, writer, fields, held)
        return Request(lines[0], fields.kept, body, keep_alive and declared is None, declared)

    async def read_body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fields: _Fields, held: Conn
    ) -> tuple[bytes, int | None]:
        """(the body, None), or (b"", the declared length) for a `Content-Length` above the limit:
        the app answers 413 from the header and the body stays unread."""
        if fields.te and fields.lengths:
            raise Refused(400, "Bad Request", "Content-Length with Transfer-Encoding")
        if len(fields.lengths) > 1:
            raise Refused(400, "Bad Request", "conflicting Content-Length values")
        if fields.te:
            if fields.te != [b"chunked"]:
                raise Refused(400, "Bad Request", "only chunked transfer encoding is accepted")
            if fields.expect:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return await self.read_chunked(reader, held), None
        if not fields.lengths:
            return b"", None
        raw = fields.lengths.pop()
        if not raw.isdigit() or len(raw) > 18:
            raise Refused(400, "Bad Request", "malformed Content-Length")
        length = int(raw)
        if length > self.max_body:
            return b"", length
        self.budget.reserve(held, length)
        if fields.expect and length:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return await self.read_exactly(reader, length), None

    @staticmethod
    async def read_exactly(reader: asyncio.StreamReader, length: int) -> bytes:
        parts, left = [], length
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(BODY_TIMEOUT) as deadline:
            while left > 0:
                deadline.reschedule(loop.time() + BODY_TIMEOUT)
                piece = await reader.read(min(left, 65536))
                if not piece:
                    raise asyncio.IncompleteReadError(b"", left)
                parts.append(piece)
                left -= len(piece)
        return b"".join(parts)

    async def read_line(self, reader: asyncio.StreamReader) -> bytes:
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                return (await reader.readuntil(b"\r\n"))[:-2]
        except asyncio.LimitOverrunError:
            raise Refused(400, "Bad Request", "a chunk line without its terminator") from None

    async def read_chunked(self, reader: asyncio.StreamReader, held: Conn) -> bytes:
        """The de-chunked body, in one buffer (a `bytes` per chunk made 2-byte chunks cost about
        50 times the bytes the budget counts), in at most `MAX_CHUNKS` chunks, giving the other
        connections a turn every `CHUNKS_PER_TURN` (what the client already sent is read without
        one: a body of tiny chunks held the loop for seconds; found by an attacker review)."""
        body = bytearray()
        chunks = 0
        while True:
            size = chunk_size(await self.read_line(reader))
            if size == 0:
                while await self.read_line(reader):
                    pass  # trailer fields, dropped
                return bytes(body)
            chunks += 1
            if chunks > MAX_CHUNKS:
                raise Refused(400, "Bad Request", f"a chunked body in more than {MAX_CHUNKS} chunks")
            if chunks % CHUNKS_PER_TURN == 0:
                await asyncio.sleep(0)
            if len(body) + size > self.max_body:
                raise Refused(413, "Payload Too Large", f"body larger than the limit of {self.max_body} bytes")
            self.budget.reserve(held, size)
            body += await self.read_exactly(reader, size)
            if await self.read_exactly(reader, 2) != b"\r\n":
                raise Refused(400, "Bad Request", "chunk without its terminator")


def _uncounted(_status: int) -> None:
    pass


class Front:
    """Accepts on its listeners, admits each connection within the limits, reads each request
    completely (`RequestReader`) and answers it with `respond` (the application, synchronously)."""

    def __init__(
        self, *, limits: Limits, respond: Respond, balance: bool = False, refused: Callable[[int], Any] = _uncounted
    ) -> None:
        self.limits = limits
        self.respond = respond
        self.balance = balance  # other processes accept on the same sockets
        self.refused = refused  # called with the status of each refusal the front answers itself
        self.refusals = RefusalLog()
        self.budget = Budget(limits, self.refusals)
        self.reader = RequestReader(limits, self.budget, self.refusals)
        self.open = 0
        self.clients: Counter[str] = Counter()
        self.tasks: dict[asyncio.Task[None], Conn] = {}
        self.listeners: list[tuple[socket.socket, bool]] = []
        self.closing = False
        self._last_bug = float("-inf")

    # --- accepting ------------------------------------------------------------------------------

    def listen(self, sock: socket.socket, *, operator: bool) -> None:
        """Accept on `sock`; `operator`: every route is served there, else only the public ones (`is_public`)."""
        sock.setblocking(False)
        self.listeners.append((sock, operator))
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock, operator)

    def stop_accepting(self) -> None:
        """Accept no more, and close the kept connections waiting for their next request (those
        reading one finish it)."""
        self.closing = True
        loop = asyncio.get_running_loop()
        for sock, _ in self.listeners:
            loop.remove_reader(sock.fileno())
        for task, conn in list(self.tasks.items()):
            if conn.idle:
                task.cancel()

    def _accept(self, sock: socket.socket, operator: bool) -> None:
        for _ in range(128):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the client gave up while it waited
                # out of descriptors (or memory): the connection stays in the backlog; accepting
                # again at once would fail again, in a loop
                self.refusals.note("out of file descriptors" if exc.errno in _OUT_OF_RESOURCES else str(exc.strerror))
                self._pause(sock, operator)
                return
            if self._admit(conn, addr, operator, sock) and self.balance:
                # Every worker is woken for a new connection and the first to accept takes it:
                # one that took a burst would serve it alone while the others idle (kept
                # connections stay where they were accepted). Stepping back for a moment, longer
                # the more it holds, lets the less busy workers take the next ones.
                self._pause(sock, operator, min(BALANCE_PAUSE * self.open, BALANCE_PAUSE_MAX))
                return

    def _pause(self, sock: socket.socket, operator: bool, seconds: float = ACCEPT_PAUSE) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.call_later(seconds, self._resume, sock, operator)

    def _resume(self, sock: socket.socket, operator: bool) -> None:
        if not self.closing:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock, operator)

    def _admit(self, conn: socket.socket, addr: Any, operator: bool, listener: socket.socket) -> bool:
        """Whether the connection was admitted (else it was turned away)."""
        client = str(addr[0]) if isinstance(addr, tuple) and addr else "local"
        if self.open >= self.limits.max_connections:
            self._turn_away(conn, "connection limit", client)
            return False
        key = client_key(client)
        if self.clients[key] >= self.limits.client_connections:
            self._turn_away(conn, "per-client connection limit", client)
            return False
        self.open += 1
        self.clients[key] += 1
        held = Conn(client, key=key, operator=operator, peer=addr, server=listener.getsockname())
        task = asyncio.get_running_loop().create_task(self._connection(conn, held))
        self.tasks[task] = held
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)

    def _turn_away(self, conn: socket.socket, reason: str, client: str) -> None:
        self.refusals.note(reason, client)
        self.refused(503)
        try:
            conn.setblocking(False)
            conn.send(BUSY)
        except OSError:
            pass
        conn.close()

    async def _connection(self, conn: socket.socket, held: Conn) -> None:
        loop = asyncio.get_running_loop()
        try:
            reader = Stream(self.budget, held, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            try:
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn)
            except OSError:
                conn.close()
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await self.handle(reader, writer, held)
        except Exception as exc:  # a bug here costs one connection, never the front
            self.refusals.note(f"internal error ({type(exc).__name__})", held.client)
            if loop.time() - self._last_bug >= LOG_INTERVAL:  # its traceback once per interval
                self._last_bug = loop.time()
                log.error("front: error in a connection", exc_info=True)
        finally:
            self.budget.release(held)
            self.open -= 1
            self.clients[held.key] -= 1
            if self.clients[held.key] <= 0:
                del self.clients[held.key]

    # --- one connection -----------------------------------------------------------------------

    async def handle(self, reader: Stream, writer: asyncio.StreamWriter, held: Conn) -> None:
        """Requests and their answers, one after the other, until the client or the app closes.

        Fair to the other connections: an answer is flushed to the kernel before the next request
        is read (no pile of unsent answers to a client that pipelines without reading), and the
        loop gets a turn between two requests (reading what a client already sent returns at
        once, without yielding: a few connections full of pipelined requests would otherwise hold
        the worker, its accepts and its heartbeat)."""
        with contextlib.suppress(AttributeError):  # a writer without a transport (a test double)
            writer.transport.set_write_buffer_limits(high=0)
        try:
            while await self.exchange(reader, writer, held):
                held.idle = True  # until the next request's first line: closed if the front stops
                await asyncio.sleep(0)
        finally:
            writer.close()

    async def exchange(self, reader: Stream, writer: asyncio.StreamWriter, held: Conn) -> bool:
        """Read one request, answer it; whether the connection stays open for another."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reader.start_head()
                request = await self.reader.read_request(reader, writer, held)
            answer, keep = self.respond(request, held)
        except Refused as r:
            self.refused(r.status)
            await self._refuse(reader, writer, r.answer())
            return False
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return False  # a client too slow or gone (or done: it closed its kept connection)
        finally:
            self.budget.release(held)
        if request.declared is not None:  # a body above the limit, left unread: answer, then drain it
            await self._refuse(reader, writer, answer)
            return False
        try:
            writer.write(answer)
            async with asyncio.timeout(SEND_TIMEOUT):
                await writer.drain()
        except (TimeoutError, ConnectionError, OSError):
            return False
        return keep and not self.closing

    @staticmethod
    async def _refuse(reader: Stream, writer: asyncio.StreamWriter, answer: bytes) -> None:
        """Send a refusal, then let the client read it before its unread bytes reset the line."""
        reader.go_on()
        try:
            writer.write(answer)
            async with asyncio.timeout(SEND_TIMEOUT):
                await writer.drain()
            writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                await _discard(reader, LINGER_BYTES)
        except (TimeoutError, ConnectionError, OSError):
            pass


async def _discard(reader: asyncio.StreamReader, limit: int) -> None:
    while limit > 0:
        # the piece's length only: a piece kept in a variable stays alive while the next read waits,
        # up to 64 KiB per refused connection for the whole linger (found measuring held heads)
        n = len(await reader.read(65536))
        if not n:
            return
        limit -= n


def count_loop_errors(loop: asyncio.AbstractEventLoop, refusals: RefusalLog) -> None:
    """The loop's unhandled errors counted with the refusals, never a traceback per connection."""

    def loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        refusals.note(f"event loop: {type(exc).__name__ if exc else context.get('message', '?')}")

    loop.set_exception_handler(loop_error)


async def serve(
    listeners: Sequence[tuple[socket.socket, bool]],
    limits: Limits,
    respond: Respond,
    *,
    until: Callable[[], Awaitable[Any]] | None = None,
    grace: float = REQUEST_TIMEOUT,
    balance: bool = False,
    refused: Callable[[int], Any] = _uncounted,
) -> None:
    """Accept on `listeners` ((socket, operator routes served there?)) until `until()` returns
    (by default SIGTERM/SIGINT), then finish the requests in hand (at most `grace` seconds).
    `balance`: other processes accept on the same sockets (`Front.balance`); `refused(status)`:
    each refusal the front answers itself, as it is answered (the service's metrics)."""
    loop = asyncio.get_running_loop()
    front = Front(limits=limits, respond=respond, balance=balance, refused=refused)
    count_loop_errors(loop, front.refusals)
    if until is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        until = stop.wait
    for sock, operator in listeners:
        front.listen(sock, operator=operator)
    await until()
    front.stop_accepting()
    if front.tasks:
        await asyncio.wait(set(front.tasks), timeout=grace)
    front.refusals.flush()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop (libuv, in C) where it is installed: the front's own cost per request
    is mostly the event loop's (BENCHMARKS.md, *`serve`'s front in the gunicorn worker*); the
    standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
