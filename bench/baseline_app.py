"""The baseline: the smallest honest hand-written Commerce Layer receiver.

A stateless Flask app that reads the raw body, checks `X-CommerceLayer-Signature` (base64
HMAC-SHA256 of the body with the shared secret, compared in constant time) and answers 200.
It stores nothing, so it is the upper bound a durable receiver is compared with. It imports
nothing from webhook_app, so its memory is Flask's and gunicorn's alone.

With `BENCH_DURABLE_DB=/path/file.db` it is the *durable* hand-written receiver instead: after
the signature check it commits the topic and body to SQLite (WAL, synchronous=FULL, a plain
`sqlite3` connection per worker, SQLite's own busy timeout) before answering 200. That row is a
reference for what durability alone costs; the targets compare with the stateless one.

The benchmark runs it with the gunicorn command line built from webhook_app's own gunicorn
defaults (same worker class, worker count, timeouts, keep-alive and request limits):

    BENCH_SECRET=... gunicorn --workers 2 --worker-class sync ... 'bench.baseline_app:create_app()'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sqlite3
import time

from flask import Flask, Response, request

MAX_BODY_BYTES = 1_048_576  # the service's default limit, so both refuse the same bodies


def _durable_store(path: str):  # type: ignore[no-untyped-def]
    conn: list[sqlite3.Connection] = []

    def store(topic: str, body: bytes) -> None:
        if not conn:  # opened lazily: after gunicorn's fork
            c = sqlite3.connect(path, timeout=5.0, isolation_level=None)
            c.execute("PRAGMA journal_mode = WAL")
            c.execute("PRAGMA synchronous = FULL")
            c.execute(
                "CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY, received_at REAL,"
                " topic TEXT, body BLOB)"
            )
            conn.append(c)
        c = conn[0]
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO deliveries (received_at, topic, body) VALUES (?, ?, ?)", (time.time(), topic, body))
        c.execute("COMMIT")

    return store


def secret_key(secret: str | bytes | None) -> bytes:
    """`secret`, or $BENCH_SECRET, as bytes; RuntimeError when there is none."""
    key = secret if secret is not None else os.environ.get("BENCH_SECRET", "")
    key_bytes = key.encode() if isinstance(key, str) else key
    if not key_bytes:
        raise RuntimeError("BENCH_SECRET is not set")
    return key_bytes


def signed_body(key_bytes: bytes) -> bytes | None:
    """The request's raw body when `X-CommerceLayer-Signature` is its base64 HMAC-SHA256 under
    `key_bytes` (compared in constant time), else None. The peers check with this one too."""
    body = request.get_data(cache=False)
    given = request.headers.get("X-CommerceLayer-Signature", "").encode("utf-8", "replace")
    expected = base64.b64encode(hmac.new(key_bytes, body, hashlib.sha256).digest())
    return body if hmac.compare_digest(expected, given) else None


def invalid_signature() -> Response:
    return Response('{"error":"invalid signature"}', 401, content_type="application/json")


def add_healthz(app: Flask) -> None:
    @app.get("/healthz")
    def healthz() -> Response:
        return Response('{"status":"ok"}', 200, content_type="application/json")


def create_app(secret: str | bytes | None = None, durable_db: str | None = None) -> Flask:
    durable_db = durable_db if durable_db is not None else os.environ.get("BENCH_DURABLE_DB")
    store = _durable_store(durable_db) if durable_db else None
    key_bytes = secret_key(secret)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.post("/webhooks/commercelayer")
    def receive() -> Response:
        body = signed_body(key_bytes)
        if body is None:
            return invalid_signature()
        if store is not None:
            store(request.headers.get("X-CommerceLayer-Topic", ""), body)
        return Response('{"status":"ok"}', 200, content_type="application/json")

    add_healthz(app)
    return app
