"""Group commit: one writer per `web` process tree, fed by its gunicorn workers over a private socket.

A commit costs a flush to disk (an fsync on SQLite, a WAL flush on PostgreSQL). Committed one
delivery at a time, that flush and the lock around it are most of what a delivery costs
(BENCHMARKS.md). So `webhook-app web` starts one writer process beside its gunicorn workers
(`runtime.CommitWriterProcess`). Each worker hands the verified delivery to the writer and waits;
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

Who talks to whom (docs/explanation/security.md, *Who can reach the commit writer*): the web master
makes a `Channel` per start, a directory of its own (a fresh random name, mode 0700, owner and mode
checked) holding the socket, and a random key that exists only in the memory of the master, its
gunicorn workers (forked from it) and the writer (given it on its stdin pipe): never in a file, an
argument or the environment. Another user cannot enter the directory, so cannot connect or bind
there. On each connection both ends prove they hold the key (HMAC-SHA256 over two fresh nonces)
before a delivery is sent: a process of the same user that does not hold the key is refused by the
writer, and a socket that does not prove itself to a worker is not a writer (the worker commits the
delivery itself; the other end has received nothing). The writer takes the time and the delivery's
identity (from topic and body) itself; a frame names neither.

Frames, after the handshake: a request is `!II` (length of the JSON head, length of the body),
the head (orjson), then the raw body; an answer is `!I` and its JSON. A request the writer cannot
use is answered with an error (the worker answers 503), and the writer goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import logging
import mmap
import os
import secrets
import select
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from webhook_app.errors import StoreError, StoreUnavailable
from webhook_app.events import Delivery, delivery_identity, replay_identity
from webhook_app.store.base import Recorded, Submission
from webhook_app.store.ports import IntakeStore

log = logging.getLogger(__name__)

_REQUEST = struct.Struct("!II")
_ANSWER = struct.Struct("!I")
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_HEAD_BYTES = 256 * 1024
#: the most deliveries one transaction holds; more waiting are the next batch
MAX_BATCH = 64
#: how long a web process waits before it tries again to reach a writer that did not answer
RECONNECT_AFTER_S = 1.0
#: the socket's name in the channel's directory
SOCKET_NAME = "commit.sock"
#: the handshake: a nonce from each end, then a proof (HMAC-SHA256) from each
NONCE_BYTES = 32
PROOF_BYTES = 32
_CLIENT_PROOF = b"webhook-app commit client\0"
_WRITER_PROOF = b"webhook-app commit writer\0"
#: a connection that has not proved the key by then is closed (by either end)
HANDSHAKE_TIMEOUT_S = 2.0
#: at most this many connections may be proving themselves at once; more are refused
MAX_UNPROVEN = 64
#: refusals (another user, no key, bad frames) are logged once per interval, with a count
WARN_INTERVAL_S = 60.0


def supported(database_url: str) -> bool:
    """`:memory:` is private to its connection: no other process could write into it."""
    return database_url.startswith(("sqlite:///", "postgresql://", "postgres://")) and not database_url.endswith(
        ":memory:"
    )


# --- the channel -------------------------------------------------------------------------------
class WriterStatus:
    """What the web master last heard from its writer: None, or why the service is not ready.

    Kept in an anonymous shared mapping made before gunicorn forks its workers, so each worker's
    `/readyz` reads what the master wrote, with no file anyone else could open."""

    _SIZE = 2048

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, self._SIZE)  # MAP_SHARED | MAP_ANONYMOUS: forks see each change

    def set_problem(self, problem: str | None) -> None:
        data = (problem or "").encode()[: self._SIZE - 2]
        self._map[0:2] = b"\0\0"
        self._map[2 : 2 + len(data)] = data
        self._map[0:2] = len(data).to_bytes(2, "big")

    def problem(self) -> str | None:
        n = int.from_bytes(self._map[0:2], "big")
        return self._map[2 : 2 + n].decode(errors="replace") if n else None


@dataclass(frozen=True)
class Channel:
    """Where one start's writer listens, and the key both ends of a connection prove they hold."""

    directory: str
    key: bytes = field(repr=False)
    status: WriterStatus | None = field(default=None, repr=False, compare=False)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, SOCKET_NAME)

    @classmethod
    def create(cls) -> Channel:
        """A new directory (mkdtemp: a random name, created by this call, 0700) and a new key.
        Raises OSError if the directory cannot be made or is not private after all."""
        directory = tempfile.mkdtemp(prefix="webhook-app-commit-")
        problem = private_directory_problem(directory)
        if problem is not None:
            raise OSError(problem)
        return cls(directory, secrets.token_bytes(32), WriterStatus())

    def for_writer(self) -> bytes:
        """The line the writer is given on its stdin."""
        return orjson.dumps({"directory": self.directory, "key": self.key.hex()}) + b"\n"

    @classmethod
    def from_writer_line(cls, line: bytes) -> Channel:
        """Raises ValueError for anything but a line `for_writer` made."""
        try:
            given = orjson.loads(line)
            directory, key = given["directory"], bytes.fromhex(given["key"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError("not a channel") from None
        if not isinstance(directory, str) or len(key) < 32:
            raise ValueError("not a channel")
        return cls(directory, key)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def private_directory_problem(directory: str) -> str | None:
    """None if `directory` is a directory (not a link) of this user that no one else may enter."""
    try:
        st = os.lstat(directory)
    except OSError as exc:
        return f"{directory}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory"
    if st.st_uid != os.geteuid():
        return f"{directory} belongs to uid {st.st_uid}, not this service's {os.geteuid()}"
    if st.st_mode & 0o077:
        return f"{directory} is open to other users (mode {oct(st.st_mode & 0o777)}, 0700 needed)"
    return None


def _proof(key: bytes, label: bytes, writer_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(key, label + writer_nonce + client_nonce, hashlib.sha256).digest()


def _peer_uid(sock: socket.socket) -> int:
    try:
        _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return -1
    return int(uid)


class _Throttle:
    """A warning logged at most once per `interval` seconds, saying how often it happened."""

    def __init__(self, message: str, interval: float) -> None:
        self.message = message
        self.interval = interval
        self.count = 0
        self.next_at = 0.0
        self.extra: dict[str, Any] = {}

    def hit(self, **extra: Any) -> None:
        self.count += 1
        self.extra = extra
        self.flush()

    def flush(self) -> None:
        """Log what is counted, if the interval since the last line is over."""
        now = time.monotonic()
        if self.count and now >= self.next_at:
            log.warning(self.message, extra={**self.extra, "count": self.count, "interval_s": self.interval})
            self.count = 0
            self.next_at = now + self.interval


# --- the frames --------------------------------------------------------------------------------
class _BadFrame(ValueError):
    """A request the writer cannot use; answered with an error, the writer goes on."""


def _text(h: Mapping[str, Any], name: str) -> str:
    value = h.get(name)
    if not isinstance(value, str):
        raise _BadFrame(f"{name} is not a string")
    return value


def _text_map(h: Mapping[str, Any], name: str) -> dict[str, str] | None:
    value = h.get(name)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _BadFrame(f"{name} is not an object of strings")
    return value


#: how a frame's head gives back a field of each type a `Delivery` field has (a new type of field
#: fails at import, not silently on the wire)
_READ_FIELD: dict[str, Callable[[Mapping[str, Any], str], object]] = {"str": _text, "dict[str, str]": _text_map}
#: the delivery's fields a frame's head carries: all of them but the body (sent raw after the
#: head) and the identity (the writer derives it from topic, body and organization). One that is
#: missing or null in the head takes its default, if it has one.
_WIRE_FIELDS = tuple(
    (f, _READ_FIELD[str(f.type)]) for f in dataclasses.fields(Delivery) if f.name not in ("body", "identity")
)


def _default(f: dataclasses.Field[Any]) -> Any:
    """The field's default (`dataclasses.MISSING` if it has none)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def encode_request(s: Submission, *, replay_nonce: str | None = None) -> bytes:
    """The frame for a submission. Neither its identity nor its time is sent: the writer takes
    them itself (from topic, body and `replay_nonce`, and from its own clock)."""
    d = s.delivery
    head = {f.name: getattr(d, f.name) for f, _ in _WIRE_FIELDS}
    head.update(
        replay_of=s.replay_of,
        replay_nonce=replay_nonce,
        trace_context=dict(s.trace_context) if s.trace_context else None,
    )
    data = orjson.dumps(head)
    return _REQUEST.pack(len(data), len(d.body)) + data + d.body


def decode_request(head: bytes, body: bytes, *, now: float) -> Submission:
    """The submission a frame asks for, received at `now`; _BadFrame if it is not one."""
    try:
        h = orjson.loads(head)
    except orjson.JSONDecodeError:
        raise _BadFrame("the head is not JSON") from None
    if not isinstance(h, dict):
        raise _BadFrame("the head is not an object")
    values: dict[str, Any] = {}
    for f, read in _WIRE_FIELDS:
        default = _default(f) if h.get(f.name) is None else dataclasses.MISSING
        values[f.name] = read(h, f.name) if default is dataclasses.MISSING else default
    replay_nonce = h.get("replay_nonce")
    if replay_nonce is not None and not isinstance(replay_nonce, str):
        raise _BadFrame("replay_nonce is not a string")
    identity = delivery_identity(values["topic"], body, values["organization"])
    delivery = Delivery(
        body=body,
        identity=identity if replay_nonce is None else replay_identity(identity, replay_nonce),
        **values,
    )
    replay_of = h.get("replay_of")
    if replay_of is not None and (isinstance(replay_of, bool) or not isinstance(replay_of, int)):
        raise _BadFrame("replay_of is not a delivery id")
    return Submission(delivery, now, replay_of, _text_map(h, "trace_context"))


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
class _NotTheWriter(Exception):
    """The socket did not prove it is this service's writer."""


class CommitClient:
    """What a web process records deliveries with: through the writer when one answers and
    proves it holds the channel's key, else directly. One connection per thread (gunicorn's sync
    workers have one)."""

    def __init__(self, store: IntakeStore, channel: Channel | None, *, timeout: float) -> None:
        self.store = store
        self.channel = channel
        self.timeout = timeout
        self._local = threading.local()
        self._impostor = _Throttle(
            "a socket where the commit writer should be did not prove it is; committing here", WARN_INTERVAL_S
        )

    def writer_problem(self) -> str | None:
        """Why the writer cannot serve (the service is then not ready), as its master last heard."""
        status = self.channel.status if self.channel is not None else None
        return status.problem() if status is not None else None

    def record_delivery(
        self,
        delivery: Delivery,
        *,
        now: float,
        replay_of: int | None = None,
        replay_nonce: str | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> Recorded:
        """`replay_nonce`: the replay token's nonce of a delivery made by `Delivery.as_replay`
        (the writer derives the identity from it, as `as_replay` did)."""
        sock = self._socket()
        if sock is None:
            return self.store.record_delivery(delivery, now=now, replay_of=replay_of, trace_context=trace_context)
        frame = encode_request(Submission(delivery, now, replay_of, trace_context), replay_nonce=replay_nonce)
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
        if self.channel is None:
            return None
        loc = self._local
        if getattr(loc, "pid", None) != os.getpid():  # after a fork: not the parent's connection
            loc.sock, loc.pid, loc.retry_at = None, os.getpid(), 0.0
        held: socket.socket | None = loc.sock
        if held is not None:
            return held
        if time.monotonic() < loc.retry_at:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            sock.connect(self.channel.path)
            self._handshake(sock, self.channel.key)
        except (OSError, _NotTheWriter) as exc:
            # Not running (restarting, not yet started: refused or no file), or not the writer:
            # nothing of a delivery was sent; this process commits it itself.
            if isinstance(exc, _NotTheWriter):
                self._impostor.hit(reason=str(exc))
            sock.close()
            loc.retry_at = time.monotonic() + RECONNECT_AFTER_S
            return None
        # The writer answers within a batch's time; waiting longer than the database timeout (plus
        # the batch ahead of this one) would only hold Commerce Layer past its own 5 s.
        sock.settimeout(self.timeout + 1.0)
        loc.sock = sock
        return sock

    @staticmethod
    def _handshake(sock: socket.socket, key: bytes) -> None:
        """Both ends prove they hold `key`; raises _NotTheWriter if the other end does not, and
        OSError (a timeout) if it does not answer in time: a writer busy with a long commit, or
        a stalling impostor; either way the delivery is committed here, without a warning."""
        uid = _peer_uid(sock)
        if uid != os.geteuid():
            raise _NotTheWriter(f"it belongs to uid {uid}")
        try:
            writer_nonce = _recv_exactly(sock, NONCE_BYTES)
            client_nonce = secrets.token_bytes(NONCE_BYTES)
            sock.sendall(client_nonce + _proof(key, _CLIENT_PROOF, writer_nonce, client_nonce))
            proof = _recv_exactly(sock, PROOF_BYTES)
        except ConnectionError:
            raise _NotTheWriter("it closed the connection during the handshake") from None
        if not hmac.compare_digest(proof, _proof(key, _WRITER_PROOF, writer_nonce, client_nonce)):
            raise _NotTheWriter("it does not hold the service's key")

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
    #: the nonce the writer sent, until the peer proves the key (then None)
    nonce: bytes | None
    since: float = field(default_factory=time.monotonic)
    buf: bytearray = field(default_factory=bytearray)


class CommitWriter:
    """The writer's loop: read every complete request that has arrived, commit them together,
    answer each. Single-threaded; the store is used by this thread only."""

    def __init__(
        self,
        store: IntakeStore,
        channel: Channel,
        *,
        max_body_bytes: int,
        on_batch: Callable[[int, float, bool], None] | None = None,
        max_batch: int = MAX_BATCH,
        clock: Callable[[], float] = time.time,
        warn_interval: float = WARN_INTERVAL_S,
    ) -> None:
        self.store = store
        self.channel = channel
        self.max_frame = max_body_bytes + 64 * 1024
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.clock = clock
        self.listener: socket.socket | None = None
        self.peers: dict[int, _Peer] = {}
        # a request, or the error it is answered with (a frame the writer could not use)
        self.pending: list[tuple[_Peer, Submission | str]] = []
        self.stopping = threading.Event()
        self.watch_fd: int | None = None
        self.batches = 0
        self._refused = _Throttle("commit writer refused a connection", warn_interval)
        self._malformed = _Throttle("commit writer refused a malformed request", warn_interval)

    def bind(self) -> str | None:
        """Listen at the channel's path: None, or why it cannot (one line)."""
        problem = private_directory_problem(self.channel.directory)
        if problem is not None:
            return problem
        path = self.channel.path
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # the socket of the writer before this one (which did not exit cleanly)
        except FileNotFoundError:
            pass
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            return f"cannot listen on {path}: {exc.strerror or exc}"
        os.chmod(path, 0o600)  # the directory keeps others out already; the socket too, to be plain
        sock.listen(256)
        self.listener = sock
        return None

    def serve(self, *, watch_fd: int | None = None) -> None:
        """Run until `stop()`, or until `watch_fd` (the parent's pipe) reaches its end; what is in
        hand then is still committed and answered."""
        assert self.listener is not None, "bind() first"
        self.watch_fd = watch_fd
        while not self.stopping.is_set():
            self._read_ready(0.0 if self.pending else 0.2)
            self._expire_handshakes()  # after reading: a reply that came during a long commit counts
            if self.pending:
                self._commit()
            self._refused.flush()
            self._malformed.flush()
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
            except OSError:  # none left (EAGAIN), or out of descriptors: the next round takes it
                return
            uid = _peer_uid(sock)
            if uid != os.geteuid():
                self._refused.hit(reason="another user", uid=uid)
                sock.close()
                continue
            if sum(1 for p in self.peers.values() if p.nonce is not None) >= MAX_UNPROVEN:
                self._refused.hit(reason="too many connections proving themselves at once")
                sock.close()
                continue
            nonce = secrets.token_bytes(NONCE_BYTES)
            sock.setblocking(False)
            try:
                sock.send(nonce)  # a fresh socket's buffer holds it: never a partial send
            except OSError:
                sock.close()
                continue
            self.peers[sock.fileno()] = _Peer(sock, nonce)

    def _expire_handshakes(self) -> None:
        deadline = time.monotonic() - HANDSHAKE_TIMEOUT_S
        for peer in [p for p in self.peers.values() if p.nonce is not None and p.since < deadline]:
            self._refused.hit(reason="no handshake in time")
            self._forget(peer)

    def _read(self, peer: _Peer) -> None:
        while True:
            try:
                chunk = peer.sock.recv(1024 * 1024)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._forget(peer)
                return
            peer.buf += chunk
            if not self._take(peer):
                return

    def _take(self, peer: _Peer) -> bool:
        """The handshake, then each whole frame in the peer's buffer; False if the peer was let go."""
        if peer.nonce is not None:
            if len(peer.buf) < NONCE_BYTES + PROOF_BYTES:
                return True
            client_nonce = bytes(peer.buf[:NONCE_BYTES])
            proof = bytes(peer.buf[NONCE_BYTES : NONCE_BYTES + PROOF_BYTES])
            del peer.buf[: NONCE_BYTES + PROOF_BYTES]
            key = self.channel.key
            if not hmac.compare_digest(proof, _proof(key, _CLIENT_PROOF, peer.nonce, client_nonce)):
                self._refused.hit(reason="it does not hold the service's key")
                self._forget(peer)
                return False
            try:
                peer.sock.send(_proof(key, _WRITER_PROOF, peer.nonce, client_nonce))
            except OSError:
                self._forget(peer)
                return False
            peer.nonce = None
        while len(peer.buf) >= _REQUEST.size:
            head_len, body_len = _REQUEST.unpack_from(peer.buf)
            if head_len > MAX_HEAD_BYTES or body_len > self.max_frame:
                self._malformed.hit(reason="a frame too large; connection closed")
                self._forget(peer)
                return False
            end = _REQUEST.size + head_len + body_len
            if len(peer.buf) < end:
                return True
            head = bytes(peer.buf[_REQUEST.size : _REQUEST.size + head_len])
            body = bytes(peer.buf[_REQUEST.size + head_len : end])
            del peer.buf[:end]
            try:
                self.pending.append((peer, decode_request(head, body, now=self.clock())))
            except _BadFrame as exc:
                self._malformed.hit(reason=str(exc))
                self.pending.append((peer, f"the commit writer refused a malformed request: {exc}"))
        return True

    def _forget(self, peer: _Peer) -> None:
        self.peers.pop(peer.sock.fileno(), None)
        # its requests not yet committed are dropped with it: nobody is waiting for their answer
        self.pending = [(p, s) for p, s in self.pending if p is not peer]
        peer.sock.close()

    def _commit(self) -> None:
        batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
        submissions = [s for _, s in batch if isinstance(s, Submission)]
        stored = iter(self._store(submissions) if submissions else [])
        for peer, item in batch:
            answer = item if isinstance(item, str) else next(stored)
            try:
                peer.sock.sendall(encode_answer(answer))
            except OSError:  # the web process is gone (or not reading): it answers 503 itself
                self._forget(peer)

    def _store(self, batch: list[Submission]) -> list[Recorded | str]:
        started = time.perf_counter()
        answers: list[Recorded | str]
        try:
            answers = list(self.store.record_deliveries(batch))
            ok = True
        except StoreError as exc:  # the database is unavailable: every request in the batch is told
            answers = [exc.detail] * len(batch)
            ok = False
        except Exception:  # one odd delivery must not fail the others with it, again and again
            log.exception("commit writer failed a batch; committing its deliveries one by one")
            answers = [self._commit_one(s) for s in batch] if len(batch) > 1 else ["the commit writer failed"]
            ok = False
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - started, ok)
        return answers

    def _commit_one(self, s: Submission) -> Recorded | str:
        """After a batch failed and was rolled back (nothing of it stored): this one alone."""
        try:
            return self.store.record_deliveries([s])[0]
        except StoreError as exc:
            return exc.detail
        except Exception:  # answered as unavailable; logged for the operator
            log.exception("commit writer could not store a delivery")
            return "the commit writer could not store this delivery"

    def close(self) -> None:
        for peer in list(self.peers.values()):
            peer.sock.close()
        self.peers.clear()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.channel.path)
