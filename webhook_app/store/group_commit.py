"""Group commit: one writer per host and database, fed by every web process over a local socket.

A commit costs a flush to disk (an fsync on SQLite, a WAL flush on PostgreSQL). Committed one
delivery at a time, that flush and the lock around it are most of what a delivery costs
(BENCHMARKS.md). So `webhook-app web` starts one writer process beside its gunicorn workers
(`runtime.start_commit_writer`). Each worker hands the verified delivery to the writer and waits;
the writer reads everything that has arrived, stores it in one transaction (`Store.record_deliveries`),
flushes once, and only then answers each request with its own result. While it commits, the next
batch gathers in the sockets: the busier the intake, the larger the batches, with no timer.

The promise of a 2xx is unchanged: a request is answered 202 only after the transaction holding
its row committed. If the batch fails, every request in it gets StoreUnavailable (the web layer
answers 503, Commerce Layer retries) and none of them was stored, so none is stored twice. If the
writer dies with requests in hand, those requests cannot know whether their batch committed: they
answer 503 too, and the retry is deduplicated by the delivery's identity like any redelivery.

When no writer answers (not started, restarting, or `WEBHOOK_APP_GROUP_COMMIT=off`), a web process
stores the delivery itself, as before (`Store.record_delivery`: on SQLite queued on the writers'
flock, which the writer also takes for each batch, as do the job worker and the CLI).

The socket is in Linux's abstract namespace, named after the database, so two services on one host
never share a writer and two `web` instances of one service on one host share the first one's.
Abstract sockets have no file permissions: the writer accepts only connections from processes of
its own user (SO_PEERCRED), as anyone who could write the database file could.

Frames: a request is `!II` (length of the JSON head, length of the body), the head (orjson), then
the raw body; an answer is `!I` and its JSON.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from webhook_app.errors import StoreError, StoreUnavailable
from webhook_app.events import Delivery
from webhook_app.logs import mask_url
from webhook_app.store.base import Recorded, Store, Submission

log = logging.getLogger(__name__)

_REQUEST = struct.Struct("!II")
_ANSWER = struct.Struct("!I")
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_HEAD_BYTES = 256 * 1024
#: the most deliveries one transaction holds; more waiting are the next batch
MAX_BATCH = 64
#: how long a web process waits before it tries again to reach a writer that did not answer
RECONNECT_AFTER_S = 1.0


def address_for(database_url: str) -> str:
    """The writer's address for a database (abstract namespace: starts with a NUL). SQLite files
    are named by their real path; a PostgreSQL URL by itself without its password."""
    if database_url.startswith("sqlite:///"):
        key = "sqlite:" + os.path.realpath(Path(database_url.removeprefix("sqlite:///")).expanduser())
    else:
        key = mask_url(database_url)
    digest = hashlib.sha256(f"{os.getuid()}:{key}".encode()).hexdigest()[:32]
    return f"\0webhook-app-commit-{digest}"


def supported(database_url: str) -> bool:
    """`:memory:` is private to its connection: no other process could write into it."""
    return database_url.startswith(("sqlite:///", "postgresql://", "postgres://")) and not database_url.endswith(
        ":memory:"
    )


# --- the frames --------------------------------------------------------------------------------
def encode_request(s: Submission) -> bytes:
    d = s.delivery
    head = orjson.dumps(
        {
            "topic": d.topic,
            "identity": d.identity,
            "secret_label": d.secret_label,
            "resource_type": d.resource_type,
            "resource_id": d.resource_id,
            "headers": d.headers,
            "now": s.now,
            "replay_of": s.replay_of,
            "trace_context": dict(s.trace_context) if s.trace_context else None,
        }
    )
    return _REQUEST.pack(len(head), len(d.body)) + head + d.body


def decode_request(head: bytes, body: bytes) -> Submission:
    h = orjson.loads(head)
    delivery = Delivery(
        topic=str(h["topic"]),
        body=body,
        identity=str(h["identity"]),
        secret_label=str(h["secret_label"]),
        resource_type=str(h["resource_type"]),
        resource_id=str(h["resource_id"]),
        headers={str(k): str(v) for k, v in (h.get("headers") or {}).items()},
    )
    replay_of = h.get("replay_of")
    trace = h.get("trace_context")
    return Submission(
        delivery,
        float(h["now"]),
        int(replay_of) if replay_of is not None else None,
        {str(k): str(v) for k, v in trace.items()} if isinstance(trace, dict) else None,
    )


def encode_answer(result: Recorded | str) -> bytes:
    if isinstance(result, Recorded):
        payload = orjson.dumps({"ok": [result.delivery_id, result.duplicate, result.job_id, result.status]})
    else:
        payload = orjson.dumps({"error": result})
    return _ANSWER.pack(len(payload)) + payload


def decode_answer(payload: bytes) -> Recorded:
    a = orjson.loads(payload)
    if "error" in a:
        raise StoreUnavailable(str(a["error"]))
    delivery_id, duplicate, job_id, status = a["ok"]
    return Recorded(int(delivery_id), bool(duplicate), None if job_id is None else int(job_id), str(status))


# --- the web side ------------------------------------------------------------------------------
class CommitClient:
    """What a web process records deliveries with: through the writer when one answers, else
    directly. One connection per thread (gunicorn's sync workers have one)."""

    def __init__(self, store: Store, address: str | None, *, timeout: float) -> None:
        self.store = store
        self.address = address
        self.timeout = timeout
        self._local = threading.local()

    def record_delivery(
        self,
        delivery: Delivery,
        *,
        now: float,
        replay_of: int | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> Recorded:
        sock = self._socket()
        if sock is None:
            return self.store.record_delivery(delivery, now=now, replay_of=replay_of, trace_context=trace_context)
        frame = encode_request(Submission(delivery, now, replay_of, trace_context))
        try:
            sock.sendall(frame)
        except OSError:
            # The writer went away (restarted, say) before the whole frame was in its socket: it
            # only ever acts on a whole frame, so nothing was stored. Store it here instead.
            self._drop()
            return self.store.record_delivery(delivery, now=now, replay_of=replay_of, trace_context=trace_context)
        try:
            return decode_answer(self._read_answer(sock))
        except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            self._drop()
            raise StoreUnavailable("the commit writer did not answer; the delivery may not be stored") from None

    def _read_answer(self, sock: socket.socket) -> bytes:
        (n,) = _ANSWER.unpack(_recv_exactly(sock, _ANSWER.size))
        if n > MAX_HEAD_BYTES:
            raise ValueError("answer too long")
        return _recv_exactly(sock, n)

    def _socket(self) -> socket.socket | None:
        if self.address is None:
            return None
        loc = self._local
        if getattr(loc, "pid", None) != os.getpid():  # after a fork: not the parent's connection
            loc.sock, loc.pid, loc.retry_at = None, os.getpid(), 0.0
        if loc.sock is not None:
            return loc.sock
        if time.monotonic() < loc.retry_at:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # The writer answers within a batch's time; waiting longer than the database timeout (plus
        # the batch ahead of this one) would only hold Commerce Layer past its own 5 s.
        sock.settimeout(self.timeout + 1.0)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            loc.retry_at = time.monotonic() + RECONNECT_AFTER_S
            return None
        loc.sock = sock
        return sock

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close()
        self._local.sock = None
        self._local.retry_at = time.monotonic() + RECONNECT_AFTER_S

    def close(self) -> None:
        if getattr(self._local, "pid", None) == os.getpid():
            self._drop()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


# --- the writer --------------------------------------------------------------------------------
@dataclass
class _Peer:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)


class CommitWriter:
    """The writer's loop: read every complete request that has arrived, commit them together,
    answer each. Single-threaded; the store is used by this thread only."""

    def __init__(
        self,
        store: Store,
        address: str,
        *,
        max_body_bytes: int,
        on_batch: Callable[[int, float, bool], None] | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.store = store
        self.address = address
        self.max_frame = max_body_bytes + 64 * 1024
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.listener: socket.socket | None = None
        self.peers: dict[int, _Peer] = {}
        self.pending: list[tuple[_Peer, Submission]] = []
        self.stopping = threading.Event()
        self.watch_fd: int | None = None
        self.batches = 0

    def bind(self) -> bool:
        """Listen; False if another writer already serves this database on this host."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            sock.bind(self.address)
        except OSError:
            sock.close()
            return False
        sock.listen(256)
        self.listener = sock
        return True

    def serve(self, *, watch_fd: int | None = None) -> None:
        """Run until `stop()`, or until `watch_fd` (the parent's pipe) reaches its end; what is in
        hand then is still committed and answered."""
        assert self.listener is not None, "bind() first"
        self.watch_fd = watch_fd
        while not self.stopping.is_set():
            self._read_ready(0.0 if self.pending else 0.2)
            if self.pending:
                self._commit()
        self._read_ready(0.0)
        while self.pending:
            self._commit()
        self.close()

    def stop(self) -> None:
        self.stopping.set()

    def _read_ready(self, timeout: float) -> None:
        assert self.listener is not None
        fds: list[Any] = [self.listener, *(p.sock for p in self.peers.values())]
        if self.watch_fd is not None:
            fds.append(self.watch_fd)
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            return
        for sock in readable:
            if sock is self.watch_fd:
                try:
                    if not os.read(self.watch_fd, 4096):
                        self.stop()  # the web server that started this writer is gone or stopping
                except OSError:
                    self.stop()
            elif sock is self.listener:
                self._accept()
            else:
                peer = self.peers.get(sock.fileno())
                if peer is not None:
                    self._read(peer)

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                _pid, uid, _gid = _PEERCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                )
            except OSError:
                uid = -1
            if uid != os.getuid():
                log.warning("commit writer refused a connection from another user", extra={"uid": uid})
                sock.close()
                continue
            sock.setblocking(False)
            self.peers[sock.fileno()] = _Peer(sock)

    def _read(self, peer: _Peer) -> None:
        while True:
            try:
                chunk = peer.sock.recv(1024 * 1024)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._forget(peer)
                return
            peer.buf += chunk
        while len(peer.buf) >= _REQUEST.size:
            head_len, body_len = _REQUEST.unpack_from(peer.buf)
            if head_len > MAX_HEAD_BYTES or body_len > self.max_frame:
                log.warning("commit writer closed a connection that sent a frame too large")
                self._forget(peer)
                return
            end = _REQUEST.size + head_len + body_len
            if len(peer.buf) < end:
                return
            head = bytes(peer.buf[_REQUEST.size : _REQUEST.size + head_len])
            body = bytes(peer.buf[_REQUEST.size + head_len : end])
            del peer.buf[:end]
            try:
                submission = decode_request(head, body)
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                log.warning("commit writer closed a connection that sent a malformed frame")
                self._forget(peer)
                return
            self.pending.append((peer, submission))

    def _forget(self, peer: _Peer) -> None:
        self.peers.pop(peer.sock.fileno(), None)
        # its requests not yet committed are dropped with it: nobody is waiting for their answer
        self.pending = [(p, s) for p, s in self.pending if p is not peer]
        peer.sock.close()

    def _commit(self) -> None:
        batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
        started = time.perf_counter()
        answers: list[Recorded | str]
        try:
            answers = list(self.store.record_deliveries([s for _, s in batch]))
            ok = True
        except StoreError as exc:  # the database is unavailable: every request in the batch is told
            answers = [exc.detail] * len(batch)
            ok = False
        except Exception:  # noqa: BLE001 - one odd delivery must not fail the others with it, again and again
            log.exception("commit writer failed a batch; committing its deliveries one by one")
            answers = [self._commit_one(s) for _, s in batch] if len(batch) > 1 else ["the commit writer failed"]
            ok = False
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - started, ok)
        for (peer, _), answer in zip(batch, answers, strict=True):
            try:
                peer.sock.sendall(encode_answer(answer))
            except OSError:  # the web process is gone (or not reading): it answers 503 itself
                self._forget(peer)

    def _commit_one(self, s: Submission) -> Recorded | str:
        """After a batch failed and was rolled back (nothing of it stored): this one alone."""
        try:
            return self.store.record_deliveries([s])[0]
        except StoreError as exc:
            return exc.detail
        except Exception:  # noqa: BLE001 - answered as unavailable; logged for the operator
            log.exception("commit writer could not store a delivery")
            return "the commit writer could not store this delivery"

    def close(self) -> None:
        for peer in list(self.peers.values()):
            peer.sock.close()
        self.peers.clear()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
