"""The buffering front `serve` puts before gunicorn: slow clients cost a socket, never a worker.

gunicorn's sync workers serve one request at a time, and a client that trickles its headers or
body holds a worker the whole time: with `serve`'s two workers, two slow connections stopped the
service. In production nginx reads each request completely before gunicorn sees it; `serve`, the
single-host setup, ships this small asyncio equivalent instead (on uvloop's event loop when
installed, a dependency: the loop is most of the front's own cost per request):

- it reads the request head within `HEAD_TIMEOUT` and each piece of the body within
  `BODY_TIMEOUT` (and the whole request within `REQUEST_TIMEOUT`), in one event loop, so
  thousands of idle or slow connections cost memory, not workers;
- only a complete request (de-chunked, with its `Content-Length`) is sent to gunicorn, over a
  private Unix socket, one request per connection; the answer is read from gunicorn at once and
  handed to the client, who gets `SEND_TIMEOUT` to take it;
- a `Content-Length` above the body limit is forwarded without its body (the app answers 413
  from the header); a chunked body past the limit is answered 413 here; malformed framing 400
  (a head line without its CR, a chunk size that is not plain hex);
- a request that finds gunicorn not (yet, or no longer) listening is held until it is, at most
  `Limits.hold_seconds`, then answered 503 with `Retry-After`: `serve` starting or its web server
  restarting costs a short wait, never a 502. An intake POST or a GET whose connection gunicorn
  dropped without an answer is sent again within the same time (the intake is idempotent: a
  delivery stored twice is stored once);
- one client cannot take the front: connections are limited per client address and in total
  (below the file-descriptor limit, each request needing two), the bytes held for unfinished
  requests are capped (503 beyond it), refusals are counted and logged once per `LOG_INTERVAL`,
  and running out of descriptors pauses accepting instead of spinning;
- on the public listener only the intake and `/healthz` are served; the operator routes
  (`/readyz`, `/metrics`, `/admin`) answer on the operator listener (`WEBHOOK_APP_OPERATOR_BIND`);
- the client's `X-Forwarded-*`, `Forwarded` and any header with an underscore (`SCRIPT_NAME`) are
  dropped, and the front sets `X-Forwarded-For`/`X-Forwarded-Proto` itself: gunicorn trusts
  whatever comes over its Unix socket. A peer in `FORWARDED_ALLOW_IPS` keeps its own forwarded
  headers when `WEBHOOK_APP_FORWARDED_HOPS` > 0 (a proxy in front of `serve`).

gunicorn's own limits (request line, header fields) still apply behind it. The listening sockets
are made by `serve` (webhook_app/runtime.py) and inherited, so a restarted front loses nothing
waiting in their backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import errno
import ipaddress
import json
import logging
import os
import re
import resource
import signal
import socket
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook_app.sources import REFUSED_DETAIL, Sources, forwarded_for

log = logging.getLogger("webhook_app.front")  # also when run as __main__

HEAD_LIMIT = 64 * 1024  # gunicorn refuses smaller heads with 414/431 behind us
HEAD_TIMEOUT = 5.0
BODY_TIMEOUT = 5.0  # between two reads of the body
REQUEST_TIMEOUT = 30.0  # the whole request
SEND_TIMEOUT = 5.0
UPSTREAM_TIMEOUT = 60.0
LINGER_SECONDS = 2.0  # after a refusal, how long to read and drop what the client still sends
LINGER_BYTES = 8 * 1024 * 1024
FD_HEADROOM = 64  # descriptors kept for the rest of the process (logs, the loop, a spike of upstreams)
CONNECTIONS_CAP = 8192  # the automatic connection limit never goes above this
LOG_INTERVAL = 10.0  # refusals: one counted line per interval
ACCEPT_PAUSE = 0.1  # out of descriptors: stop accepting this long
RETRY_AFTER = 1  # seconds, on a 503 from the front
TRIM_AFTER = 4 * 1024 * 1024  # buffered bytes given back to the system once this many were held
INTAKE_PATH = b"/webhooks/commercelayer"
PUBLIC_PATHS = frozenset({INTAKE_PATH, b"/healthz"})
_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"expect", b"transfer-encoding", b"content-length", b"te"}
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
    """How many client connections the front keeps open at once: `configured` (0: as many as
    fit), never more than fit in `nofile` descriptors (each request in flight needs two: the
    client's and gunicorn's) with `FD_HEADROOM` to spare."""
    fit = max(8, (nofile - FD_HEADROOM) // 2)
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
    """What one front may hold (README, *Limits*); `from_settings` reads them from the service's settings."""

    max_body: int
    hold_seconds: float = 3.0
    max_connections: int = 1024
    client_connections: int = 64
    buffer_bytes: int = 64 * 1024 * 1024
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    sources: Sources = Sources()  # WEBHOOK_APP_ALLOWED_SOURCES: checked before an intake body is read

    @property
    def client_buffer_bytes(self) -> int:
        """One client's share of the buffer: a quarter (at least one largest request)."""
        return max(self.buffer_bytes // 4, self.max_body + HEAD_LIMIT)

    @classmethod
    def from_settings(cls, settings: Any, environ: Mapping[str, str], *, nofile: int) -> Limits:
        trusted = trusted_networks(environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1")
        return cls(
            max_body=settings.max_body_bytes,
            hold_seconds=settings.front_hold_seconds,
            max_connections=connection_budget(settings.front_max_connections, nofile),
            client_connections=settings.front_client_connections,
            buffer_bytes=settings.front_buffer_bytes,
            trusted=trusted if settings.forwarded_hops > 0 else (),
            sources=settings.sources,
        )


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
    bodies keeps the front's memory at its peak for good). None where there is none (musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class _Held:
    """The bytes one request holds against the front's buffer."""

    __slots__ = ("client", "size")

    def __init__(self, client: str) -> None:
        self.client = client
        self.size = 0


class Front:
    def __init__(self, *, upstream: str, limits: Limits) -> None:
        self.upstream = upstream  # unix:/path or host:port
        self._upstream_address: tuple[int, Any] | None = None
        self.limits = limits
        self.max_body = limits.max_body
        self.open = 0
        self.clients: Counter[str] = Counter()
        self.buffered = 0
        self.client_buffered: Counter[str] = Counter()
        self.peak = 0
        self.refusals = RefusalLog()
        self.tasks: set[asyncio.Task[None]] = set()
        self.listeners: list[tuple[socket.socket, bool]] = []
        self.closing = False
        self._trim = _malloc_trim()
        self._trim_pending = False
        self._last_bug = float("-inf")

    # --- accepting ------------------------------------------------------------------------------

    def listen(self, sock: socket.socket, *, operator: bool) -> None:
        """Accept on `sock`; `operator`: every route is served there, else only PUBLIC_PATHS."""
        sock.setblocking(False)
        self.listeners.append((sock, operator))
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock, operator)

    def stop_accepting(self) -> None:
        self.closing = True
        loop = asyncio.get_running_loop()
        for sock, _ in self.listeners:
            loop.remove_reader(sock.fileno())

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
            self._admit(conn, addr, operator)

    def _pause(self, sock: socket.socket, operator: bool) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.call_later(ACCEPT_PAUSE, self._resume, sock, operator)

    def _resume(self, sock: socket.socket, operator: bool) -> None:
        if not self.closing:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock, operator)

    def _admit(self, conn: socket.socket, addr: Any, operator: bool) -> None:
        client = str(addr[0]) if isinstance(addr, tuple) and addr else "local"
        if self.open >= self.limits.max_connections:
            self._turn_away(conn, "connection limit", client)
        elif self.clients[client] >= self.limits.client_connections:
            self._turn_away(conn, "per-client connection limit", client)
        else:
            self.open += 1
            self.clients[client] += 1
            task = asyncio.get_running_loop().create_task(self._connection(conn, client, operator))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _turn_away(self, conn: socket.socket, reason: str, client: str) -> None:
        self.refusals.note(reason, client)
        try:
            conn.setblocking(False)
            conn.send(BUSY)
        except OSError:
            pass
        conn.close()

    async def _connection(self, conn: socket.socket, client: str, operator: bool) -> None:
        loop = asyncio.get_running_loop()
        held = _Held(client)
        try:
            reader = asyncio.StreamReader(limit=HEAD_LIMIT, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            try:
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn)
            except OSError:
                conn.close()
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await self.handle(reader, writer, client=client, operator=operator, held=held)
        except Exception as exc:  # a bug here costs one connection, never the front
            self.refusals.note(f"internal error ({type(exc).__name__})", client)
            if loop.time() - self._last_bug >= LOG_INTERVAL:  # its traceback once per interval
                self._last_bug = loop.time()
                log.error("front: error in a connection", exc_info=True)
        finally:
            self.release(held)
            self.open -= 1
            self.clients[client] -= 1
            if self.clients[client] <= 0:
                del self.clients[client]

    # --- the buffer budget --------------------------------------------------------------------

    def reserve(self, held: _Held, size: int) -> None:
        client = held.client
        if (
            self.buffered + size > self.limits.buffer_bytes
            or self.client_buffered[client] + size > self.limits.client_buffer_bytes
        ):
            self.refusals.note("buffer limit", client)
            raise unavailable("too many unfinished requests; try again shortly")
        self.buffered += size
        self.client_buffered[client] += size
        held.size += size
        if self.buffered > self.peak:
            self.peak = self.buffered

    def release(self, held: _Held) -> None:
        if not held.size:
            return
        self.buffered -= held.size
        left = self.client_buffered[held.client] - held.size
        if left > 0:
            self.client_buffered[held.client] = left
        else:
            del self.client_buffered[held.client]
        held.size = 0
        if self.peak >= TRIM_AFTER and self.buffered < self.peak // 4 and not self._trim_pending:
            self._trim_pending = True
            asyncio.get_running_loop().call_later(0.5, self._give_back)

    def _give_back(self) -> None:
        self._trim_pending = False
        self.peak = self.buffered
        if self._trim is not None:
            self._trim()

    # --- one connection -----------------------------------------------------------------------

    def trusts(self, client: str) -> bool:
        if not self.limits.trusted:
            return False
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(ip in net for net in self.limits.trusted)

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client: str = "local",
        operator: bool = True,
        held: _Held | None = None,
    ) -> None:
        held = held or _Held(client)
        refused = False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request, resend = await self.read_request(reader, writer, client=client, operator=operator, held=held)
            answer = await self.forward(request, resend=resend)
        except Refused as r:
            answer, refused = r.answer(), True
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()  # a client too slow or gone: nothing reached gunicorn
            return
        finally:
            self.release(held)
        try:
            writer.write(answer)
            async with asyncio.timeout(SEND_TIMEOUT):
                await writer.drain()
            if refused:  # let the client read the answer before its unread bytes reset the line
                writer.write_eof()
                async with asyncio.timeout(LINGER_SECONDS):
                    await _discard(reader, LINGER_BYTES)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def read_head(self, reader: asyncio.StreamReader) -> list[bytes]:
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
                if line[-2:-1] != b"\r":
                    raise Refused(400, "Bad Request", "a line of the request head does not end with CRLF")
                if len(line) == 2:
                    if not lines:
                        raise Refused(400, "Bad Request", "malformed request line")
                    return lines
                lines.append(line[:-2])

    async def read_request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client: str = "local",
        operator: bool = True,
        held: _Held | None = None,
    ) -> tuple[bytes, bool]:
        """The complete request to hand to gunicorn, and whether it may be sent again if gunicorn
        drops it unanswered (GET, HEAD and the idempotent intake)."""
        held = held or _Held(client)
        lines = await self.read_head(reader)
        self.reserve(held, sum(map(len, lines)))
        request_line = lines[0]
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise Refused(400, "Bad Request", "malformed request line")
        method, path = parts[0], parts[1].partition(b"?")[0]
        if not operator and path not in PUBLIC_PATHS:
            raise Refused(404, "Not Found", "no such route on this listener")
        resend = method in (b"GET", b"HEAD") or (method == b"POST" and path == INTAKE_PATH)
        trusted = self.trusts(client)
        kept: list[bytes] = []
        lengths: set[bytes] = set()
        te: list[bytes] = []
        expect = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise Refused(400, "Bad Request", "malformed header field")
            lname = name.lower()
            if lname in _HOP:
                if lname == b"content-length":
                    lengths.add(value.strip())
                elif lname == b"transfer-encoding":
                    te.append(value.strip().lower())
                elif lname == b"expect":
                    expect = expect or value.strip().lower() == b"100-continue"
                continue
            if b"_" in lname:  # SCRIPT_NAME, PATH_INFO...: gunicorn would take them from us
                continue
            if not trusted and (lname.startswith(b"x-forwarded-") or lname == b"forwarded"):
                continue
            kept.append(line)
        if not trusted:
            kept += [b"X-Forwarded-For: " + client.encode("ascii", "replace"), b"X-Forwarded-Proto: http"]
        sources = self.limits.sources  # WEBHOOK_APP_ALLOWED_SOURCES, judged as the intake will judge it
        if sources.enabled and path == INTAKE_PATH and not sources.allows(client, forwarded_for(kept)):
            self.refusals.note("source not allowed", client)
            raise Refused(403, "Forbidden", REFUSED_DETAIL)  # before the body: none of it is read
        if te and lengths:
            raise Refused(400, "Bad Request", "Content-Length with Transfer-Encoding")
        if len(lengths) > 1:
            raise Refused(400, "Bad Request", "conflicting Content-Length values")
        body = b""
        if te:
            if te != [b"chunked"]:
                raise Refused(400, "Bad Request", "only chunked transfer encoding is accepted")
            if expect:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await self.read_chunked(reader, held)
        elif lengths:
            raw = lengths.pop()
            if not raw.isdigit() or len(raw) > 18:
                raise Refused(400, "Bad Request", "malformed Content-Length")
            length = int(raw)
            if length > self.max_body:  # the app answers 413 from the header; the body stays unread
                return self.rebuild(request_line, kept, b"", declared=length), resend
            self.reserve(held, length)
            if expect and length:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await self.read_exactly(reader, length)
        return self.rebuild(request_line, kept, body), resend

    @staticmethod
    def rebuild(request_line: bytes, kept: Sequence[bytes], body: bytes, *, declared: int | None = None) -> bytes:
        length = len(body) if declared is None else declared
        head = b"\r\n".join([request_line, *kept, b"Content-Length: %d" % length, b"Connection: close"])
        return head + b"\r\n\r\n" + body

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

    async def read_chunked(self, reader: asyncio.StreamReader, held: _Held) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size = chunk_size(await self.read_line(reader))
            if size == 0:
                while await self.read_line(reader):
                    pass  # trailer fields, dropped
                return b"".join(parts)
            total += size
            if total > self.max_body:
                raise Refused(413, "Payload Too Large", f"body larger than the limit of {self.max_body} bytes")
            self.reserve(held, size)
            parts.append(await self.read_exactly(reader, size))
            if await self.read_exactly(reader, 2) != b"\r\n":
                raise Refused(400, "Bad Request", "chunk without its terminator")

    # --- gunicorn -----------------------------------------------------------------------------

    def _upstream_socket(self) -> tuple[socket.socket, Any]:
        """A fresh non-blocking socket for gunicorn, and the address to connect it to."""
        if self._upstream_address is None:
            if self.upstream.startswith("unix:"):
                self._upstream_address = (socket.AF_UNIX, self.upstream[5:])
            else:  # an address, once (a name resolved on every request would block the loop)
                host, _, port = self.upstream.rpartition(":")
                info = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)[0]
                self._upstream_address = (info[0], info[4])
        family, address = self._upstream_address
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock, address

    async def _exchange(self, sock: socket.socket, request: bytes) -> bytes:
        """Send `request` on the connected `sock`, read the answer until gunicorn closes: the
        loop's socket calls, without a transport and stream pair per request."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, request)
        parts = []
        while piece := await loop.sock_recv(sock, 65536):
            parts.append(piece)
        return b"".join(parts)

    async def forward(self, request: bytes, *, resend: bool = False) -> bytes:
        """gunicorn's answer to `request`. While gunicorn does not listen (starting, restarting,
        or the front is out of descriptors) the request waits, up to `hold_seconds`; a request
        that may be sent again (`resend`) is, if gunicorn closes its connection without answering."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.hold_seconds
        pause = 0.01
        while True:
            sock: socket.socket | None = None
            try:
                sock, address = self._upstream_socket()
                async with asyncio.timeout_at(deadline):
                    await loop.sock_connect(sock, address)
            except (OSError, TimeoutError):
                if sock is not None:
                    sock.close()  # not listening (yet): wait below
            else:
                try:
                    async with asyncio.timeout(UPSTREAM_TIMEOUT):
                        # gunicorn closes after one request (Connection: close)
                        answer = await self._exchange(sock, request)
                except TimeoutError:
                    raise unavailable("the web server did not answer in time") from None
                except OSError:
                    answer = b""
                finally:
                    sock.close()
                if answer_complete(answer, head_request=request.startswith(b"HEAD ")):
                    return answer
                # Cut short (gunicorn killed while answering): never pass half an answer on. A
                # delivery sent again is a duplicate at worst (the store answers 200 for it).
                if not resend:
                    raise unavailable("the web server closed the connection without an answer")
            if loop.time() + pause >= deadline:
                self.refusals.note("web server not ready")
                raise unavailable("the web server is not ready; try again shortly")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)


def answer_complete(answer: bytes, *, head_request: bool = False) -> bool:
    """Whether gunicorn's answer arrived whole: a head, and all of the body its `Content-Length`
    (or chunked framing) announces; an answer without either ends at the connection's end. The
    answer to a HEAD request, a 204 and a 304 have no body whatever their headers say."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head_request or head[9:12] in (b"204", b"304"):
        return True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                return len(body) >= int(value.strip())
            except ValueError:
                return False
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return body.endswith(b"0\r\n\r\n")
    return True


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


async def _discard(reader: asyncio.StreamReader, limit: int) -> None:
    while limit > 0:
        piece = await reader.read(65536)
        if not piece:
            return
        limit -= len(piece)


async def serve(listeners: Sequence[tuple[socket.socket, bool]], upstream: str, limits: Limits) -> None:
    """Accept on `listeners` ((socket, operator routes served there?)) until SIGTERM/SIGINT, then
    finish the requests in hand (at most `REQUEST_TIMEOUT`)."""
    loop = asyncio.get_running_loop()
    front = Front(upstream=upstream, limits=limits)

    def loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        front.refusals.note(f"event loop: {type(exc).__name__ if exc else context.get('message', '?')}")

    loop.set_exception_handler(loop_error)  # counted, never a traceback per connection
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for sock, operator in listeners:
        front.listen(sock, operator=operator)
    log.info(
        "front ready",
        extra={
            "max_connections": limits.max_connections,
            "client_connections": limits.client_connections,
            "buffer_bytes": limits.buffer_bytes,
            "hold_seconds": limits.hold_seconds,
        },
    )
    await stop.wait()
    front.stop_accepting()
    if front.tasks:
        await asyncio.wait(set(front.tasks), timeout=REQUEST_TIMEOUT)
    front.refusals.flush()


def main(argv: Sequence[str] | None = None) -> int:
    from webhook_app.config import Settings
    from webhook_app.errors import ConfigError
    from webhook_app.logs import configure_logging, settings_secrets

    p = argparse.ArgumentParser(prog="python -m webhook_app.front", description="serve's front (started by serve)")
    p.add_argument("--listen-fd", type=int, required=True, metavar="FD", help="the public listening socket")
    p.add_argument("--operator-fd", type=int, default=None, metavar="FD", help="the operator listening socket")
    p.add_argument("--all-routes", action="store_true", help="serve the operator routes on the public socket too")
    p.add_argument("--upstream", required=True, metavar="unix:PATH|HOST:PORT")
    args = p.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"webhook-app: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, secrets=settings_secrets(settings))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limits = Limits.from_settings(settings, os.environ, nofile=nofile if nofile > 0 else 1024)
    listeners = [(socket.socket(fileno=args.listen_fd), args.all_routes)]
    if args.operator_fd is not None:
        listeners.append((socket.socket(fileno=args.operator_fd), True))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(listeners, args.upstream, limits))
    return 0


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (libuv, in C) where it is installed: the front's own cost per request
    is mostly the event loop's (BENCHMARKS.md, *serve's front*); the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
