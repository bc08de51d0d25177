"""A peer for the ingest benchmark: a durable receiver built on procrastinate (PostgreSQL jobs).

The Flask view reads the raw body, checks `X-CommerceLayer-Signature` exactly as the baseline
does (base64 HMAC-SHA256, `hmac.compare_digest`), defers a procrastinate task with the topic and
the body (`process_delivery.defer(topic=..., body=...)`: one row in `procrastinate_jobs`,
committed before `defer` returns) and answers 202. procrastinate's documented form for a sync
(WSGI) application: one `procrastinate.App` with a `PsycopgConnector`, opened synchronously with
`app.open()`, which gives it a psycopg connection pool of its own (the connector's sync half,
`SyncPsycopgConnector`). gunicorn (without `--preload`) builds the app in each worker after the
fork, so each worker opens its own pool there.

    BENCH_SECRET=... BENCH_PROCRASTINATE_DSN=postgresql://postgres@127.0.0.1:5432/peer \
        gunicorn --workers 4 --worker-class sync 'bench.peer_procrastinate:create_app()'
    BENCH_PROCRASTINATE_DSN=... python -m procrastinate --app=bench.peer_procrastinate.proc_app schema --apply
    BENCH_PROCRASTINATE_DSN=... python -m procrastinate --app=bench.peer_procrastinate.proc_app worker

The task parses the body (the work a real task starts with); a job that ran is `succeeded` in
`procrastinate_jobs`. procrastinate is imported only when its app is built
(`bench/requirements.txt`; `make bench-deps`), so the benchmark's other tools and their tests
import this module without it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request

MAX_BODY_BYTES = 1_048_576  # as the baseline and the service
TASK_NAME = "bench.peer.process_delivery"
QUEUE = "deliveries"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/bench_procrastinate"

Enqueue = Callable[[str, str], None]


def make_app(dsn: str | None = None) -> Any:
    """The procrastinate app (and its one task), connected to `dsn` or $BENCH_PROCRASTINATE_DSN."""
    import procrastinate

    dsn = dsn or os.environ.get("BENCH_PROCRASTINATE_DSN", DEFAULT_DSN)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name=TASK_NAME, queue=QUEUE)
    def process_delivery(topic: str, body: str) -> str:
        doc = json.loads(body)
        return f"{topic} {doc['data']['id']}"

    return app


def __getattr__(name: str) -> Any:
    """`procrastinate --app=bench.peer_procrastinate.proc_app ...` builds the app on first use."""
    if name == "proc_app":
        app = make_app()
        globals()["proc_app"] = app
        return app
    raise AttributeError(name)


def procrastinate_enqueue() -> Enqueue:
    app = make_app().open()  # sync: a psycopg ConnectionPool in this (forked) worker
    task = app.tasks[TASK_NAME]

    def enqueue(topic: str, body: str) -> None:
        task.defer(topic=topic, body=body)

    return enqueue


def create_app(secret: str | bytes | None = None, enqueue: Enqueue | None = None) -> Flask:
    key = secret if secret is not None else os.environ.get("BENCH_SECRET", "")
    key_bytes = key.encode() if isinstance(key, str) else key
    if not key_bytes:
        raise RuntimeError("BENCH_SECRET is not set")
    send = enqueue or procrastinate_enqueue()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.post("/webhooks/commercelayer")
    def receive() -> Response:
        body = request.get_data(cache=False)
        given = request.headers.get("X-CommerceLayer-Signature", "").encode("utf-8", "replace")
        expected = base64.b64encode(hmac.new(key_bytes, body, hashlib.sha256).digest())
        if not hmac.compare_digest(expected, given):
            return Response('{"error":"invalid signature"}', 401, content_type="application/json")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return Response('{"error":"body is not UTF-8"}', 400, content_type="application/json")
        send(request.headers.get("X-CommerceLayer-Topic", ""), text)
        return Response('{"status":"queued"}', 202, content_type="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response('{"status":"ok"}', 200, content_type="application/json")

    return app
