"""Group commit (webhook_app/store/group_commit.py): one writer per `web` commits the deliveries
of all its workers together, each request answered only once its own row is durable.

First the writer and the client over a real socket with a real SQLite file (batches made
deterministic by holding the writer's commit until every frame is in its sockets), who may talk
to the writer (the key, another user, a squatter) and what it does with bad frames; then the
real `webhook-app web` processes on SQLite and PostgreSQL: the workers' deliveries share
transactions, a writer killed is replaced while the workers commit on their own, another user
squatting the socket gets nothing while every 2xx is stored, a writer that cannot listen makes
the service not ready, and the database files are private.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import pytest
import requests
from support import SECRET, make_settings, pg_schema_url, require_postgres, signed_headers
from support.builders import order_body
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.errors import StoreUnavailable
from webhook_app.events import Delivery, delivery_identity, replay_identity
from webhook_app.runtime import CommitWriterProcess, WriterKeeper
from webhook_app.signing import WebhookSecret
from webhook_app.store import DeliveryFilter, Submission, open_store
from webhook_app.store.group_commit import (
    RECONNECT_AFTER_S,
    Channel,
    CommitClient,
    CommitWriter,
    decode_request,
    encode_request,
)
from webhook_app.store.sqlite import SQLiteStore

SECRETS = [WebhookSecret("test", SECRET.encode())]


def _delivery(order_id: str, topic: str = "orders.place") -> Delivery:
    body = order_body(order_id)
    return Delivery.from_http(signed_headers(body, topic), body, secrets=SECRETS)


def _unframe(frame: bytes) -> tuple[bytes, bytes]:
    head_n, body_n = struct.unpack("!II", frame[:8])
    assert len(frame) == 8 + head_n + body_n
    return frame[8 : 8 + head_n], frame[8 + head_n :]


def test_every_delivery_field_crosses_the_wire():
    """The frame carries every field of a Delivery (derived from the dataclass): one added to
    `Delivery` cannot be dropped silently when group commit is on."""
    body = order_body("oWire")
    headers = {**signed_headers(body, "orders.place"), "X-Extra": "ünïcode"}
    d = Delivery.from_http(headers, body, secrets=SECRETS, organization="acme")
    for f in fields(Delivery):
        assert getattr(d, f.name) not in (f.default, None, "", {}, b""), f.name
    sent = Submission(d, 1.0, 7, {"traceparent": "00-abc-def-01"})
    assert decode_request(*_unframe(encode_request(sent)), now=1.0) == sent
    replay = Submission(d.as_replay("nonce"), 2.0, 7)
    assert decode_request(*_unframe(encode_request(replay, replay_nonce="nonce")), now=2.0) == replay


def test_a_frame_without_the_fields_that_have_defaults_takes_the_defaults():
    body = order_body("oOld")
    head = json.dumps(
        {"topic": "orders.place", "secret_label": "main", "resource_type": "orders", "resource_id": "oOld"}
    )
    got = decode_request(head.encode(), body, now=3.0)
    assert got.delivery.headers == {} and got.delivery.organization == ""
    assert got.delivery.identity == delivery_identity("orders.place", body)


class _Gated(CommitWriter):
    """A real writer whose next commit waits for `gate`, then takes in everything that arrived
    meanwhile: the test decides what one batch is."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.gate = threading.Event()
        self.gate.set()
        self.expect = 0  # how many requests the held commit is for (set by _submit_all)

    def _commit(self) -> None:
        if self.expect:
            # The writer may reach its first commit before or after the gate opens (it may have
            # read one frame before the others were sent): either way, wait for the gate, then
            # read until every client's frame is in hand (each is in its socket by then).
            self.gate.wait(timeout=10)
            deadline = time.monotonic() + 5
            while len(self.pending) < self.expect and time.monotonic() < deadline:
                self._read_ready(0.05)
            self.expect = 0
        super()._commit()


class _Writer:
    """A CommitWriter on a real SQLite file and a real channel (a private directory in the
    temporary directory, a key), its loop in a thread started when the test says."""

    def __init__(self, tmp_path: Path, store: SQLiteStore | None = None, **kw) -> None:
        self.path = str(tmp_path / "gc.db")
        self.store = store or SQLiteStore(self.path, busy_timeout_ms=300)
        self.store.migrate()
        self.channel = Channel.create()
        self.batches: list[tuple[int, bool]] = []
        self.writer = _Gated(
            self.store,
            self.channel,
            max_body_bytes=1 << 20,
            on_batch=lambda n, _s, ok: self.batches.append((n, ok)),
            **kw,
        )
        assert self.writer.bind() is None
        self.thread = threading.Thread(target=self.writer.serve, daemon=True)

    def client(self) -> CommitClient:
        return CommitClient(SQLiteStore(self.path), self.channel, timeout=3.0)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.writer.stop()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        else:
            self.writer.close()
        self.store.close()
        self.channel.remove()


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[_Writer]:
    w = _Writer(tmp_path)
    yield w
    w.stop()


class _SendsThenWaits(CommitClient):
    """A real client that says when its frame is in the writer's socket, before reading the answer."""

    def __init__(self, *a, sent: threading.Barrier, **kw) -> None:
        super().__init__(*a, **kw)
        self.sent = sent

    def _read_answer(self, sock: socket.socket) -> bytes:
        self.sent.wait(timeout=10)
        return super()._read_answer(sock)


def _submit_all(w: _Writer, deliveries: list[Delivery]) -> list:
    """Each delivery from a client (a connection) of its own, all in the writer's sockets before
    it reads any of them: they are one batch."""
    connected = threading.Barrier(len(deliveries))
    sent = threading.Barrier(len(deliveries) + 1)
    results: list = [None] * len(deliveries)

    def one(i: int) -> None:
        c = _SendsThenWaits(SQLiteStore(w.path), w.channel, timeout=3.0, sent=sent)
        try:
            assert c._socket() is not None  # the handshake, before any client sends a delivery
            connected.wait(timeout=10)
            results[i] = c.record_delivery(deliveries[i], now=time.time())
        except StoreUnavailable as exc:
            results[i] = exc
        finally:
            _close(c)

    w.writer.gate.clear()
    w.writer.expect = len(deliveries)
    w.start()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(deliveries))]
    for t in threads:
        t.start()
    sent.wait(timeout=10)  # every frame is in the writer's sockets
    w.writer.gate.set()
    for t in threads:
        t.join(timeout=20)
    return results


def _close(c: CommitClient) -> None:
    c.close()
    c.store.close()


def _stored(path: str) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT d.resource_id, COUNT(j.id) FROM deliveries d LEFT JOIN jobs j ON j.delivery_id = d.id"
            " GROUP BY d.id ORDER BY d.resource_id"
        ).fetchall()


def test_deliveries_sent_together_are_one_transaction_each_answered_with_its_own_ids(writer):
    ds = [_delivery(f"ordGC{n:03d}") for n in range(12)]
    results = _submit_all(writer, ds)
    assert writer.batches == [(12, True)]  # one transaction, one flush
    assert all(not r.duplicate and r.status == "queued" for r in results), results
    assert len({r.delivery_id for r in results}) == 12 and len({r.job_id for r in results}) == 12
    stored = open_store(f"sqlite:///{writer.path}")
    try:
        for d, r in zip(ds, results, strict=True):
            got = stored.get_delivery(r.delivery_id)
            assert got is not None and got.body == d.body  # each answer names its own row
    finally:
        stored.close()
    assert _stored(writer.path) == [(f"ordGC{n:03d}", 1) for n in range(12)]


def test_the_same_delivery_twice_in_one_batch_is_stored_once(writer):
    d = _delivery("ordTwice01")
    first, second = _submit_all(writer, [d, d])
    assert writer.batches == [(2, True)]
    # which of the two the writer read first is the stored one; the other is its duplicate
    assert sorted([first.duplicate, second.duplicate]) == [False, True]
    assert first.delivery_id == second.delivery_id and first.job_id == second.job_id
    assert _stored(writer.path) == [("ordTwice01", 1)]


def test_a_batch_that_cannot_commit_fails_every_request_and_stores_none(writer):
    # Another writer holds SQLite's write lock past the busy timeout: the batch's BEGIN fails.
    blocker = sqlite3.connect(writer.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    ds = [_delivery(f"ordLocked{n}") for n in range(5)]
    try:
        results = _submit_all(writer, ds)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert writer.batches == [(5, False)]
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert "locked" in results[0].detail
    assert _stored(writer.path) == []
    # Commerce Layer's retries, once the lock is gone: each stored once.
    c = writer.client()
    try:
        retried = [c.record_delivery(d, now=time.time()) for d in ds]
        assert not any(r.duplicate for r in retried)
        assert [c.record_delivery(d, now=time.time()).duplicate for d in ds] == [True] * 5
    finally:
        _close(c)
    assert _stored(writer.path) == [(f"ordLocked{n}", 1) for n in range(5)]


class _Picky(SQLiteStore):
    """A real SQLite store that cannot store one particular delivery (a bug's stand-in)."""

    def record_deliveries(self, batch):
        if any(s.delivery.resource_id == "ordPoison" for s in batch):
            raise ValueError("cannot store this one")
        return super().record_deliveries(batch)


def test_one_delivery_that_breaks_a_batch_does_not_fail_the_others(tmp_path):
    w = _Writer(tmp_path, store=_Picky(str(tmp_path / "gc.db")))
    try:
        ds = [_delivery("ordFine1"), _delivery("ordPoison"), _delivery("ordFine2")]
        results = _submit_all(w, ds)
    finally:
        w.stop()
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception), results
    assert isinstance(results[1], StoreUnavailable)
    assert _stored(w.path) == [("ordFine1", 1), ("ordFine2", 1)]


def test_without_a_writer_the_web_process_commits_itself(tmp_path):
    path = str(tmp_path / "alone.db")
    SQLiteStore(path).migrate()
    channel = Channel.create()  # nobody listens there
    c = CommitClient(SQLiteStore(path), channel, timeout=1.0)
    try:
        r = c.record_delivery(_delivery("ordAlone1"), now=time.time())
    finally:
        _close(c)
        channel.remove()
    assert not r.duplicate and r.job_id is not None
    assert _stored(path) == [("ordAlone1", 1)]


class _Vanishing(CommitWriter):
    """A real writer that reads a request and goes away without answering (a crash's stand-in)."""

    def _commit(self) -> None:
        for peer in list(self.peers.values()):
            self._forget(peer)  # its requests with it, unanswered
        self.stop()


def test_a_writer_that_dies_holding_the_request_gets_a_503_not_a_guess(tmp_path):
    """It read the frame and went away without answering: nobody can tell whether it committed,
    so the request is unavailable (Commerce Layer retries; the identity deduplicates)."""
    path = str(tmp_path / "gone.db")
    SQLiteStore(path).migrate()
    channel = Channel.create()
    writer = _Vanishing(SQLiteStore(path), channel, max_body_bytes=1 << 20)
    assert writer.bind() is None
    t = threading.Thread(target=writer.serve)
    t.start()
    c = CommitClient(SQLiteStore(path), channel, timeout=2.0)
    try:
        with pytest.raises(StoreUnavailable, match="did not answer"):
            c.record_delivery(_delivery("ordVanish"), now=time.time())
    finally:
        _close(c)
        writer.stop()
        t.join(timeout=5)
        writer.store.close()
        channel.remove()
    assert _stored(path) == []  # and the client did not store it behind the writer's back


def _run_as_nobody(job) -> str:
    """`job(report)` in a forked child running as uid/gid 65534; what it reported."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            job(lambda text: os.write(w, text.encode()))
        except BaseException as exc:  # reported to the parent
            os.write(w, f"child failed: {exc!r}".encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    return b"".join(chunks).decode()


def _connect_as_nobody(address: str, frame: bytes, attempts: int = 1) -> str:
    def job(report) -> None:
        outcomes: dict[str, int] = {}
        for _ in range(attempts):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(address)
                s.sendall(frame)
                got = s.recv(1 << 16)
                out = "closed" if got == b"" else "answered"
            except OSError as exc:
                out = f"error {exc.errno}"
            finally:
                s.close()
            outcomes[out] = outcomes.get(out, 0) + 1
        report(json.dumps(outcomes))

    return _run_as_nobody(job)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_another_user_cannot_reach_the_writer_and_a_flood_of_tries_is_one_log_line(writer, caplog):
    writer.start()
    frame = encode_request(Submission(_delivery("ordIntruder"), time.time()))
    # The socket's directory is 0700: another user cannot even reach it.
    assert json.loads(_connect_as_nobody(writer.channel.path, frame)) == {"error 13": 1}  # EACCES
    # Were it opened up, the writer itself refuses another user (SO_PEERCRED); a flood of such
    # connections is one warning a minute with a count, not a line each.
    os.chmod(writer.channel.directory, 0o711)
    os.chmod(writer.channel.path, 0o777)
    try:
        outcomes = json.loads(_connect_as_nobody(writer.channel.path, frame, attempts=2000))
    finally:
        os.chmod(writer.channel.directory, 0o700)
    assert set(outcomes) <= {"closed", "error 104", "error 32"}, outcomes  # closed, reset, broken pipe
    assert _stored(writer.path) == []
    refusals = [r for r in caplog.records if r.getMessage() == "commit writer refused a connection"]
    assert len(refusals) == 1 and refusals[0].uid == 65534, [r.__dict__ for r in refusals]


def _proven_socket(channel: Channel) -> socket.socket:
    """A connection to the writer that has done the handshake with the channel's key (as a web
    worker would), to send frames of the test's own making."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(channel.path)
    CommitClient._handshake(s, channel.key)
    return s


def _send_head(s: socket.socket, head: dict, body: bytes) -> dict:
    raw = json.dumps(head).encode()
    s.sendall(struct.pack("!II", len(raw), len(body)) + raw + body)
    (n,) = struct.unpack("!I", _recv(s, 4))
    return json.loads(_recv(s, n))


def _recv(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        assert chunk, "closed"
        got += chunk
    return got


def _head(order_id: str, **extra) -> tuple[dict, bytes]:
    body = order_body(order_id)
    head = {
        "topic": "orders.place",
        "secret_label": "test",
        "resource_type": "orders",
        "resource_id": order_id,
        "headers": {"X-CommerceLayer-Topic": "orders.place"},
        "replay_of": None,
        "trace_context": None,
        **extra,
    }
    return head, body


def test_a_process_of_the_same_user_without_the_key_is_refused_and_stores_nothing(writer, caplog):
    writer.start()
    head, body = _head("ordNoKey")
    raw = json.dumps(head).encode()
    frame = struct.pack("!II", len(raw), len(body)) + raw + body
    for attempt in (frame, bytes(64), os.urandom(64)):  # a frame as before, no proof, a wrong one
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(writer.channel.path)
        assert len(_recv(s, 32)) == 32  # the writer's nonce
        s.sendall(attempt)
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(1 << 16) == b""  # closed without an answer
        s.close()
    # a client with another key (a copy of the service from another start, say)
    other = Channel(writer.channel.directory, os.urandom(32))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(other.path)
    with pytest.raises(Exception, match="closed|key|reset"):
        CommitClient._handshake(s, other.key)
    s.close()
    assert _stored(writer.path) == []
    assert "commit writer refused a connection" in caplog.text
    # the service's own client is served as ever
    c = writer.client()
    try:
        assert c.record_delivery(_delivery("ordWithKey"), now=time.time()).status == "queued"
    finally:
        _close(c)
    assert writer.batches == [(1, True)]


def test_a_socket_that_cannot_prove_the_key_is_not_taken_for_the_writer(tmp_path, caplog):
    """A same-user process listening where the writer should (a writer with a key of its own):
    the web process sends it nothing and commits the delivery itself."""
    path = str(tmp_path / "real.db")
    SQLiteStore(path).migrate()
    channel = Channel.create()
    other = SQLiteStore(str(tmp_path / "impostor.db"))
    other.migrate()
    impostor = CommitWriter(other, Channel(channel.directory, os.urandom(32)), max_body_bytes=1 << 20)
    assert impostor.bind() is None
    t = threading.Thread(target=impostor.serve)
    t.start()
    c = CommitClient(SQLiteStore(path), channel, timeout=2.0)
    try:
        r = c.record_delivery(_delivery("ordNotThere"), now=time.time())
    finally:
        _close(c)
        impostor.stop()
        t.join(timeout=5)
        other.close()
        channel.remove()
    assert r.status == "queued" and _stored(path) == [("ordNotThere", 1)]
    assert _stored(str(tmp_path / "impostor.db")) == [] and impostor.batches == 0
    assert "did not prove" in caplog.text


def test_the_writer_takes_the_time_and_the_identity_itself(writer):
    writer.start()
    s = _proven_socket(writer.channel)
    head, body = _head("ordForged", now=0, identity="chosen-by-the-sender")
    before = time.time()
    try:
        answer = _send_head(s, head, body)
    finally:
        s.close()
    assert "ok" in answer, answer
    with sqlite3.connect(writer.path) as conn:
        identity, received_at = conn.execute("SELECT identity, received_at FROM deliveries").fetchone()
    assert identity == delivery_identity("orders.place", body)
    assert before - 1 <= received_at <= time.time() + 1


def test_a_replay_through_the_writer_is_a_new_delivery_named_by_its_nonce(writer):
    writer.start()
    d = _delivery("ordReplayed")
    c = writer.client()
    try:
        first = c.record_delivery(d, now=time.time())
        again = c.record_delivery(
            d.as_replay("nonce-1"), now=time.time(), replay_of=first.delivery_id, replay_nonce="nonce-1"
        )
    finally:
        _close(c)
    assert not again.duplicate and again.delivery_id != first.delivery_id
    with sqlite3.connect(writer.path) as conn:
        row = conn.execute("SELECT identity, replay_of FROM deliveries WHERE id = ?", (again.delivery_id,)).fetchone()
    assert row == (replay_identity(d.identity, "nonce-1"), first.delivery_id)


@pytest.mark.parametrize(
    "change",
    [
        {"headers": ["not", "a", "dict"]},
        {"headers": {"X": 1}},
        {"topic": None},
        {"resource_id": 7},
        {"replay_of": "1"},
        {"replay_of": True},
        {"trace_context": [1]},
        {"replay_nonce": 5},
    ],
)
def test_a_malformed_request_is_answered_with_an_error_and_the_writer_goes_on(writer, change, caplog):
    writer.start()
    s = _proven_socket(writer.channel)
    try:
        head, body = _head("ordBad", **change)
        assert "malformed" in _send_head(s, head, body)["error"]
        head, body = _head("ordGood")  # the same connection, the next request
        assert "ok" in _send_head(s, head, body)
        s.sendall(struct.pack("!II", 9, 0) + b"[1, 2, 3]")  # not an object
        (n,) = struct.unpack("!I", _recv(s, 4))
        assert "malformed" in json.loads(_recv(s, n))["error"]
    finally:
        s.close()
    assert writer.thread.is_alive()
    assert _stored(writer.path) == [("ordGood", 1)]
    assert "commit writer refused a malformed request" in caplog.text


def test_refusals_are_logged_once_per_interval_with_how_many(tmp_path, caplog):
    w = _Writer(tmp_path, warn_interval=1.0)
    w.start()
    started = time.monotonic()
    try:
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(w.channel.path)
            s.sendall(bytes(64))
            try:
                s.recv(64)
                s.recv(64)
            except ConnectionResetError:
                pass
            s.close()
        time.sleep(1.5)  # the interval is over: the writer says how many since its first line
    finally:
        w.stop()
    took = time.monotonic() - started
    lines = [r for r in caplog.records if r.getMessage() == "commit writer refused a connection"]
    assert 2 <= len(lines) <= 2 + took, ([r.count for r in lines], took)  # one a second at most
    assert sum(r.count for r in lines) == 300 and lines[0].count == 1


def test_a_connection_that_never_proves_itself_is_closed(writer):
    writer.start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(writer.channel.path)
    started = time.monotonic()
    assert len(_recv(s, 32)) == 32
    assert s.recv(64) == b""
    assert time.monotonic() - started < 4
    s.close()


# --- the real processes ------------------------------------------------------------------------
def _web(procs: list[Service], tmp_path: Path, db_url: str, workers: int = 4, **env: str) -> tuple[Service, str]:
    port = free_port()
    full = {"CL_WEBHOOK_SECRETS": f"test:{SECRET}", "WEBHOOK_APP_DATABASE_URL": db_url, **env}
    web = Service(["web", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)], full, tmp_path / f"web-{port}.log")
    procs.append(web)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc=web.proc)
    return web, url


def _first_writer(web: Service) -> int:
    """The pid of the commit writer `web` started, once it is ready."""
    wait_until(lambda: _writer_pids(web), what="the commit writer's start")
    return _writer_pids(web)[0]


def _writer_pids(web: Service) -> list[int]:
    return [int(p) for p in re.findall(r'"commit writer ready","pid":(\d+)', web.output())]


def _post_many(url: str, prefix: str, n: int, threads: int = 16) -> list[requests.Response]:
    def one(i: int) -> requests.Response:
        body = order_body(f"{prefix}{i:04d}")
        return requests.post(url + "/webhooks/commercelayer", data=body, headers=signed_headers(body), timeout=15)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def _metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _web_processes_share_transactions(procs, tmp_path, db_url: str) -> None:
    store = open_store(db_url)
    store.migrate()
    try:
        web, url = _web(procs, tmp_path, db_url)
        wait_until(lambda: _writer_pids(web), what="the commit writer's start")
        answers = _post_many(url, "ordShare", 160)
        assert [r.status_code for r in answers] == [202] * 160, {r.status_code for r in answers}
        ids = {r.json()["delivery_id"] for r in answers}
        assert len(ids) == 160
        stats = store.queue_stats(now=time.time())
        assert stats.pending == 160
        deliveries = _metric(url, "webhook_app_commit_batch_size_sum")
        batches = _metric(url, "webhook_app_commit_batch_size_count")
        assert deliveries == 160  # every one went through the writer...
        assert batches < deliveries  # ...and some shared a transaction with others
    finally:
        store.close()


@pytest.mark.e2e
def test_sqlite_web_workers_commit_together_through_one_writer(procs, tmp_path):
    _web_processes_share_transactions(procs, tmp_path, f"sqlite:///{tmp_path / 'share.db'}")


@pytest.mark.e2e
@pytest.mark.postgres
def test_postgres_web_workers_commit_together_through_one_writer(procs, tmp_path):
    require_postgres()
    with pg_schema_url() as url:
        _web_processes_share_transactions(procs, tmp_path, url)


@pytest.mark.e2e
def test_a_killed_writer_is_replaced_and_no_delivery_is_lost_meanwhile(procs, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'kill.db'}"
    web, url = _web(procs, tmp_path, db_url, workers=2)
    first = _first_writer(web)
    os.kill(first, signal.SIGKILL)
    # Meanwhile each worker commits its own (after at most one 503 for a request the writer held).
    answers = _post_many(url, "ordMeanwhile", 40, threads=4)
    codes = [r.status_code for r in answers]
    assert set(codes) <= {202, 503} and codes.count(503) <= 2, codes
    wait_until(lambda: len(_writer_pids(web)) >= 2, timeout=20, what="a new commit writer")
    assert _writer_pids(web)[1] != first
    again = _post_many(url, "ordMeanwhile", 40, threads=4)  # the retries
    assert {r.status_code for r in again} <= {200, 202}
    store = open_store(db_url)
    try:
        assert store.queue_stats(now=time.time()).pending == 40  # each once
    finally:
        store.close()
    assert "commit writer exited" in web.output()


def test_the_keeper_restarts_its_writer_relays_what_it_says_and_stops_it_when_its_pipe_ends(tmp_path, monkeypatch):
    """runtime.WriterKeeper, run here in a thread (`web` runs it in a process forked from
    gunicorn's master): the writer it starts listens on the channel; one killed is started again
    after the backoff; `unavailable ...` and `ready` reach the status /readyz reads; the end of its
    pipe stops the writer (which exits 0, having committed what it held) and removes the channel."""
    db = tmp_path / "keeper.db"
    monkeypatch.setenv("WEBHOOK_APP_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("CL_WEBHOOK_SECRETS", f"test:{SECRET}")
    store = open_store(f"sqlite:///{db}")
    store.migrate()
    store.close()
    channel = Channel.create()
    stop_r, stop_w = os.pipe()
    keeper = WriterKeeper(channel, stop_fd=stop_r)
    thread = threading.Thread(target=keeper.run, name="keeper")
    thread.start()
    try:
        wait_until(lambda: os.path.exists(channel.path), what="the writer's socket")
        first = keeper.proc.pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: keeper.restarts == 1 and keeper.proc is not None, timeout=10, what="a new writer")
        writer = keeper.proc
        assert writer.pid != first

        def listening() -> bool:  # the killed writer's socket file is still there, refusing
            with socket.socket(socket.AF_UNIX) as s:
                return s.connect_ex(channel.path) == 0

        wait_until(listening, what="the new writer listening")
        store = open_store(f"sqlite:///{db}")
        try:
            client = CommitClient(store, channel, timeout=5.0)
            wait_until(lambda: client.record_delivery(_delivery("ordKept01"), now=time.time()), what="a commit")
            client.close()
        finally:
            store.close()
        keeper._heard(b"unavailable the directory is open to other users\nrea")
        assert channel.status.problem() == "the commit writer cannot listen: the directory is open to other users"
        keeper._heard(b"dy\n")
        assert channel.status.problem() is None
    finally:
        os.close(stop_w)
        thread.join(timeout=30)
        os.close(stop_r)
    assert not thread.is_alive()
    assert writer.returncode == 0 and keeper.proc is None
    assert not os.path.exists(channel.directory)
    assert _stored(db) == [("ordKept01", 1)]


def test_a_writer_never_started_leaves_no_directory_behind(tmp_path):
    """gunicorn may exit before its on_starting hook (--check-config, a bad setting): the
    channel made for the writer is removed all the same."""
    writer = CommitWriterProcess.for_settings(make_settings(tmp_path))
    assert writer is not None and os.path.isdir(writer.channel.directory)
    writer.stop()
    assert not os.path.exists(writer.channel.directory)
    assert CommitWriterProcess.for_settings(make_settings(tmp_path, group_commit=False)) is None


@pytest.mark.e2e
def test_web_stops_its_writer_and_group_commit_can_be_turned_off(procs, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'stop.db'}"
    web, url = _web(procs, tmp_path, db_url, workers=1)
    pid = _first_writer(web)
    assert web.stop() == 0
    wait_until(lambda: not _alive(pid), timeout=10, what="the writer's exit")

    off, url = _web(procs, tmp_path, db_url, workers=1, WEBHOOK_APP_GROUP_COMMIT="false")
    body = order_body("ordNoWriter")
    assert (
        requests.post(url + "/webhooks/commercelayer", data=body, headers=signed_headers(body), timeout=5).status_code
        == 202
    )
    assert _metric(url, "webhook_app_commit_batch_size_count") == 0
    assert _writer_pids(off) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


# --- another local user: a squatter on the writer's socket --------------------------------------
SQUATTER = r"""
import errno, json, os, select, socket, struct, sys

old_name = "\0" + sys.argv[1]
fake_ok = json.dumps({"ok": [1, False, 1, "queued"]}).encode()
report = {"accepted": 0, "received_bytes": 0, "bound_old_name": False, "paths_seen": [], "connected": 0,
          "bound": 0, "connect_errors": {}, "attempts": 0}
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    listener.bind(old_name)
    listener.listen(64)
    report["bound_old_name"] = True
except OSError:
    listener = None
conns = []
print("squatting", flush=True)
while True:
    fds = [sys.stdin] + conns + ([listener] if listener else [])
    ready, _, _ = select.select(fds, [], [], 0.02)
    if sys.stdin in ready and not os.read(sys.stdin.fileno(), 64):
        break
    for s in ready:
        if s is listener:
            c, _ = listener.accept()
            report["accepted"] += 1
            conns.append(c)
        elif s is not sys.stdin:
            data = s.recv(1 << 20)
            if not data:
                conns.remove(s); s.close(); continue
            report["received_bytes"] += len(data)
            s.sendall(struct.pack("!I", len(fake_ok)) + fake_ok)  # "stored", as a writer says
    # and the service's socket, wherever it is: every path a Unix socket is bound to on this host
    with open("/proc/net/unix") as f:
        paths = [line.split()[7] for line in f.read().splitlines()[1:] if len(line.split()) > 7]
    for p in paths:
        if "webhook-app" not in p or p.startswith("@"):
            continue
        if p not in report["paths_seen"]:
            report["paths_seen"].append(p)
        report["attempts"] += 1
        for op in ("connect", "bind"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                getattr(s, op)(p)
                report["connected" if op == "connect" else "bound"] += 1
                if op == "connect":
                    s.settimeout(0.5)
                    try:
                        got = s.recv(1 << 16)
                        report["received_bytes"] += len(got)
                    except OSError:
                        pass
            except OSError as exc:
                key = f"{op}:{errno.errorcode.get(exc.errno, exc.errno)}"
                report["connect_errors"][key] = report["connect_errors"].get(key, 0) + 1
            finally:
                s.close()
print(json.dumps(report), flush=True)
"""


def _as_another_user() -> list[str]:
    """A command prefix that runs a program as `nobody` with a Python it can run, or skip (fail
    under CI: the check needs a second user)."""
    why = None
    if os.geteuid() != 0:
        why = "running as another user needs root"
    elif not (shutil.which("runuser") or shutil.which("setpriv")):
        why = "neither runuser nor setpriv (util-linux) is installed"
    if why is None:
        prefix = (
            ["runuser", "-u", "nobody", "--"]
            if shutil.which("runuser")
            else ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        )
        for python in (sys.executable, "/usr/bin/python3"):
            if subprocess.run([*prefix, python, "-c", "pass"], capture_output=True).returncode == 0:
                return [*prefix, python]
        why = "no Python that the user nobody can run"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this: {why}", pytrace=False)
    pytest.skip(why)


class _Squatter:
    """`nobody` holding the writer's old abstract name, answering "stored" to whatever arrives,
    and trying to connect to and bind every webhook-app socket path on the host."""

    def __init__(self, prefix: list[str], old_name: str) -> None:
        self.proc = subprocess.Popen(
            [*prefix, "-c", SQUATTER, old_name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "squatting"

    def report(self) -> dict:
        out, _ = self.proc.communicate(input="", timeout=30)
        return json.loads(out.strip().splitlines()[-1])


def _old_writer_name(db_path: Path) -> str:
    """The abstract name the writer used to listen on: derived from public facts (uid, path)."""
    digest = hashlib.sha256(f"{os.getuid()}:sqlite:{os.path.realpath(db_path)}".encode()).hexdigest()[:32]
    return f"webhook-app-commit-{digest}"  # abstract: the squatter puts the NUL in front


def _signed_posts(url: str, prefix: str, n: int) -> dict[str, int]:
    answers = _post_many(url, prefix, n, threads=4)
    return {f"{prefix}{i:04d}": r.status_code for i, r in enumerate(answers)}


def _assert_every_2xx_stored(db: Path, answers: dict[str, int]) -> set[str]:
    acked = {o for o, code in answers.items() if 200 <= code < 300}
    store = open_store(f"sqlite:///{db}")
    try:
        stored = {d.order_id for d in store.list_deliveries(DeliveryFilter(limit=1000))}
    finally:
        store.close()
    assert acked <= stored, f"{len(acked - stored)} of {len(acked)} answered 2xx but not stored"
    return acked


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["web", "serve"])
def test_another_user_squatting_the_writer_socket_gets_nothing_and_every_2xx_is_stored(procs, tmp_path, command):
    prefix = _as_another_user()
    db = tmp_path / "squat.db"
    squatter = _Squatter(prefix, _old_writer_name(db))  # there before the service starts
    try:
        port = free_port()
        env = {"CL_WEBHOOK_SECRETS": f"test:{SECRET}", "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{db}"}
        args = [command, "--bind", f"127.0.0.1:{port}", "--workers", "2"]
        svc = Service(args, env, tmp_path / f"{command}.log")
        procs.append(svc)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", proc=svc.proc)
        answers = _signed_posts(url, "ordSquatA", 25)  # the writer may not be ready yet
        _assert_every_2xx_stored(db, answers)
        first = _first_writer(svc)
        time.sleep(RECONNECT_AFTER_S + 0.2)  # the workers that found no writer try again
        answers |= _signed_posts(url, "ordSquatW", 25)  # through the writer
        if command == "web":
            assert _metric(url, "webhook_app_commit_batch_size_sum") >= 25
        os.kill(first, signal.SIGKILL)  # the writer restarts: the squatter tries again meanwhile
        answers |= _signed_posts(url, "ordSquatB", 25)
        wait_until(lambda: len(_writer_pids(svc)) >= 2, timeout=20, what="a new commit writer")
        answers |= _signed_posts(url, "ordSquatC", 25)
    finally:
        report = squatter.report()
    acked = _assert_every_2xx_stored(db, answers)
    assert set(answers.values()) <= {202, 503} and len(acked) >= 95, answers
    assert report["accepted"] == 0 and report["received_bytes"] == 0, report
    assert report["connected"] == 0 and report["bound"] == 0, report
    assert report["paths_seen"] and report["attempts"] > 0, report  # it did find the service's socket
    refusals = svc.output().count("refused")
    assert refusals <= 3, refusals  # another user's attempts do not flood the log


@pytest.mark.e2e
def test_the_sqlite_files_a_real_service_writes_are_private_to_its_user(procs, tmp_path):
    """They hold customer e-mails and addresses: 0600, and the directory the service made 0700,
    whatever the umask lets other files be (this test's is the usual 022)."""
    old = os.umask(0o022)
    try:
        db = tmp_path / "made-by-the-service" / "private.db"
        web, url = _web(procs, tmp_path, f"sqlite:///{db}", workers=1)
        _first_writer(web)
        assert {r.status_code for r in _post_many(url, "ordMode", 3, threads=1)} == {202}
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in db.parent.iterdir() if p.name.startswith("private.db")}
    assert set(modes) >= {"private.db", "private.db-wal", "private.db-shm", "private.db-lock"}, modes
    assert set(modes.values()) == {"0o600"}, modes
    assert oct(db.parent.stat().st_mode & 0o777) == "0o700"


def test_an_older_database_readable_by_every_user_is_made_unreadable_to_them(tmp_path, caplog):
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)
    s = SQLiteStore(str(path))
    try:
        s.migrate()
    finally:
        s.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # other users lose it, its group too
    assert "open to other local users; now it is 0600" in caplog.text


@pytest.mark.e2e
def test_a_writer_that_cannot_listen_says_so_once_and_the_service_is_not_ready(procs, tmp_path):
    """Its directory opened to other users (by hand, say): the next writer will not listen
    there. One log line, /readyz 503 with the reason, every delivery still committed (by the
    workers), and ready again once the directory is private again."""
    db_url = f"sqlite:///{tmp_path / 'nobind.db'}"
    web, url = _web(procs, tmp_path, db_url, workers=2)
    first = _first_writer(web)
    sock = re.search(r'"commit writer ready","pid":\d+,"socket":"([^"]+)"', web.output()).group(1)
    directory = os.path.dirname(sock)
    assert requests.get(url + "/readyz", timeout=5).status_code == 200
    os.chmod(directory, 0o755)
    try:
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: "commit writer cannot listen" in web.output(), what="the writer's complaint")

        def not_ready() -> bool:
            r = requests.get(url + "/readyz", timeout=5)
            return r.status_code == 503 and "0700" in r.json()["checks"].get("commit_writer", "")

        wait_until(not_ready, timeout=10, what="/readyz 503")
        answers = _post_many(url, "ordNoWriter", 20, threads=4)
        assert {r.status_code for r in answers} == {202}
        _assert_every_2xx_stored(tmp_path / "nobind.db", {f"ordNoWriter{i:04d}": 202 for i in range(20)})
    finally:
        os.chmod(directory, 0o700)
    wait_until(lambda: len(_writer_pids(web)) >= 2, timeout=15, what="the writer listening again")
    wait_until(lambda: requests.get(url + "/readyz", timeout=5).status_code == 200, timeout=5, what="ready again")
    assert web.output().count("commit writer cannot listen") == 1  # said once, not once per retry
