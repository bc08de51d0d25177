"""The buffering front `serve` puts before gunicorn: slow clients cost a socket, never a worker.

gunicorn's sync workers serve one request at a time, and a client that trickles its headers or
body holds a worker the whole time: with `serve`'s two workers, two slow connections stopped the
service. In production nginx reads each request completely before gunicorn sees it; `serve`, the
single-host setup, ships this small asyncio equivalent instead (standard library only):

- it reads the request head within `HEAD_TIMEOUT` and each piece of the body within
  `BODY_TIMEOUT` (and the whole request within `REQUEST_TIMEOUT`), in one event loop, so
  thousands of idle or slow connections cost memory, not workers;
- only a complete request (de-chunked, with its `Content-Length`) is sent to gunicorn, over a
  private Unix socket, one request per connection; the answer is read from gunicorn at once and
  handed to the client, who gets `SEND_TIMEOUT` to take it;
- a `Content-Length` above the body limit is forwarded without its body (the app answers 413
  from the header); a chunked body past the limit is answered 413 here; malformed framing 400.

gunicorn's own limits (request line, header fields) still apply behind it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)

HEAD_LIMIT = 64 * 1024  # gunicorn refuses smaller heads with 414/431 behind us
HEAD_TIMEOUT = 5.0
BODY_TIMEOUT = 5.0  # between two reads of the body
REQUEST_TIMEOUT = 30.0  # the whole request
SEND_TIMEOUT = 5.0
UPSTREAM_TIMEOUT = 60.0
MAX_CONNECTIONS = 2048
LINGER_SECONDS = 2.0  # after a refusal, how long to read and drop what the client still sends
LINGER_BYTES = 8 * 1024 * 1024
_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"expect", b"transfer-encoding", b"content-length", b"te"}


class Refused(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def error_answer(status: int, title: str, detail: str) -> bytes:
    body = json.dumps({"errors": [{"status": str(status), "title": title, "detail": detail}]}).encode()
    return (
        f"HTTP/1.1 {status} {title}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


class Front:
    def __init__(self, *, upstream: str, max_body: int) -> None:
        self.upstream = upstream  # unix:/path or host:port
        self.max_body = max_body
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.slots.locked():
            writer.close()
            return
        async with self.slots:
            refused = False
            try:
                request = await asyncio.wait_for(self.read_request(reader, writer), REQUEST_TIMEOUT)
                answer = await asyncio.wait_for(self.forward(request), UPSTREAM_TIMEOUT)
            except Refused as r:
                answer, refused = error_answer(r.status, r.title, r.detail), True
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                writer.close()  # a client too slow or gone: nothing reached gunicorn
                return
            try:
                writer.write(answer)
                await asyncio.wait_for(writer.drain(), SEND_TIMEOUT)
                if refused:  # let the client read the answer before its unread bytes reset the line
                    writer.write_eof()
                    await asyncio.wait_for(_discard(reader, LINGER_BYTES), LINGER_SECONDS)
            except (TimeoutError, ConnectionError, OSError):
                pass
            finally:
                writer.close()

    async def read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            raise Refused(431, "Request Header Fields Too Large", "the request head is too large") from None
        lines = head[:-4].split(b"\r\n")
        request_line, fields = lines[0], []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise Refused(400, "Bad Request", "malformed header field")
            fields.append((name.lower(), value.strip(), line))
        lengths = {v for n, v, _ in fields if n == b"content-length"}
        te = [v.lower() for n, v, _ in fields if n == b"transfer-encoding"]
        if te and lengths:
            raise Refused(400, "Bad Request", "Content-Length with Transfer-Encoding")
        if len(lengths) > 1:
            raise Refused(400, "Bad Request", "conflicting Content-Length values")
        expect = any(n == b"expect" and v.lower() == b"100-continue" for n, v, _ in fields)
        kept = [line for n, _, line in fields if n not in _HOP]
        body = b""
        if te:
            if te != [b"chunked"]:
                raise Refused(400, "Bad Request", "only chunked transfer encoding is accepted")
            if expect:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await self.read_chunked(reader)
        elif lengths:
            raw = lengths.pop()
            if not raw.isdigit() or len(raw) > 18:
                raise Refused(400, "Bad Request", "malformed Content-Length")
            length = int(raw)
            if length > self.max_body:  # the app answers 413 from the header; the body stays unread
                return self.rebuild(request_line, kept, b"", declared=length)
            if expect and length:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await self.read_exactly(reader, length)
        return self.rebuild(request_line, kept, body)

    @staticmethod
    def rebuild(request_line: bytes, kept: Sequence[bytes], body: bytes, *, declared: int | None = None) -> bytes:
        length = len(body) if declared is None else declared
        head = b"\r\n".join([request_line, *kept, b"Content-Length: %d" % length, b"Connection: close"])
        return head + b"\r\n\r\n" + body

    @staticmethod
    async def read_exactly(reader: asyncio.StreamReader, length: int) -> bytes:
        parts, left = [], length
        while left:
            piece = await asyncio.wait_for(reader.read(min(left, 65536)), BODY_TIMEOUT)
            if not piece:
                raise asyncio.IncompleteReadError(b"", left)
            parts.append(piece)
            left -= len(piece)
        return b"".join(parts)

    async def read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), BODY_TIMEOUT)
            size_text = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise Refused(400, "Bad Request", "malformed chunk size") from None
            if size == 0:
                while (await asyncio.wait_for(reader.readuntil(b"\r\n"), BODY_TIMEOUT)) != b"\r\n":
                    pass  # trailer fields, dropped
                return b"".join(parts)
            total += size
            if total > self.max_body:
                raise Refused(413, "Payload Too Large", f"body larger than the limit of {self.max_body} bytes")
            parts.append(await self.read_exactly(reader, size))
            if await self.read_exactly(reader, 2) != b"\r\n":
                raise Refused(400, "Bad Request", "chunk without its terminator")

    async def forward(self, request: bytes) -> bytes:
        try:
            if self.upstream.startswith("unix:"):
                r, w = await asyncio.open_unix_connection(self.upstream[5:])
            else:
                host, _, port = self.upstream.rpartition(":")
                r, w = await asyncio.open_connection(host, int(port))
        except OSError:
            raise Refused(502, "Bad Gateway", "the web server is not reachable") from None
        try:
            w.write(request)
            await w.drain()
            return await r.read()  # gunicorn closes after one request (Connection: close)
        finally:
            w.close()


async def _discard(reader: asyncio.StreamReader, limit: int) -> None:
    while limit > 0:
        piece = await reader.read(65536)
        if not piece:
            return
        limit -= len(piece)


async def serve(listen: str, upstream: str, max_body: int) -> None:
    front = Front(upstream=upstream, max_body=max_body)
    host, _, port = listen.rpartition(":")
    server = await asyncio.start_server(front.handle, host or "127.0.0.1", int(port), limit=HEAD_LIMIT, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m webhook_app.front")
    p.add_argument("--listen", required=True, metavar="HOST:PORT")
    p.add_argument("--upstream", required=True, metavar="unix:PATH|HOST:PORT")
    p.add_argument("--max-body", type=int, required=True)
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.listen, args.upstream, args.max_body))
    except OSError as exc:
        print(f"webhook-app: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
