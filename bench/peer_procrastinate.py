"""A peer for the ingest benchmark: a durable receiver built on procrastinate (PostgreSQL jobs).

The Flask view (`peer_receiver.py`, the same for both peers) reads the raw body, checks
`X-CommerceLayer-Signature` exactly as the baseline does (base64 HMAC-SHA256,
`hmac.compare_digest`), defers a procrastinate task with the topic and
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

import json
import os
from typing import Any

from flask import Flask

from bench.peer_receiver import Enqueue, create_receiver

TASK_NAME = "bench.peer.process_delivery"
QUEUE = "deliveries"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/bench_procrastinate"


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
    """The peer's receiver (`peer_receiver.py`), queueing into procrastinate unless given `enqueue`."""
    return create_receiver(__name__, secret, enqueue, procrastinate_enqueue)
