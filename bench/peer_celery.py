"""A peer for the ingest benchmark: the receiver most Python teams write first, Flask + Celery on Redis.

The Flask view (`peer_receiver.py`, the same for both peers) reads the raw body, checks
`X-CommerceLayer-Signature` exactly as the baseline does (base64 HMAC-SHA256,
`hmac.compare_digest`), hands the topic and the body to a Celery task with `.delay(...)` (a message
pushed onto a Redis list) and answers 202. Celery's usual, documented form: one `Celery` app with
`broker=redis://...`, JSON serialisation, results ignored; the producer's connection is opened
lazily by Celery in each gunicorn worker, after the fork. Nothing here is on disk unless Redis is
configured to persist (the benchmark records how it is).

    BENCH_SECRET=... BENCH_CELERY_BROKER=redis://127.0.0.1:6379/0 BENCH_CELERY_QUEUE=deliveries \
        gunicorn --workers 4 --worker-class sync 'bench.peer_celery:create_app()'
    BENCH_CELERY_BROKER=... BENCH_CELERY_QUEUE=deliveries celery -A bench.peer_celery:celery_app worker

The task parses the body (the work a real task starts with) and counts itself in Redis under
`<queue>:done`, so a smoke test can show that the queued tasks are real. celery and redis are
imported only when the Celery app is built (`bench/requirements.txt`; `make bench-deps`), so
the benchmark's other tools and their tests import this module without them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Flask

from bench.peer_receiver import Enqueue, create_receiver

TASK_NAME = "bench.peer.process_delivery"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "bench-peer-deliveries"


def make_celery(broker: str | None = None, queue: str | None = None) -> Any:
    """The Celery app (and its one task), configured from the arguments or the environment."""
    from celery import Celery

    broker = broker or os.environ.get("BENCH_CELERY_BROKER", DEFAULT_BROKER)
    queue = queue or os.environ.get("BENCH_CELERY_QUEUE", DEFAULT_QUEUE)
    app = Celery("bench_peer", broker=broker)
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=TASK_NAME)
    def process_delivery(topic: str, body: str) -> str:
        import redis

        doc = json.loads(body)
        redis.Redis.from_url(broker).incr(f"{queue}:done")
        return f"{topic} {doc['data']['id']}"

    return app


def __getattr__(name: str) -> Any:
    """`celery -A bench.peer_celery:celery_app worker` builds the app on first use (PEP 562)."""
    if name == "celery_app":
        app = make_celery()
        globals()["celery_app"] = app
        return app
    raise AttributeError(name)


def celery_enqueue() -> Enqueue:
    app = make_celery()
    task = app.tasks[TASK_NAME]

    def enqueue(topic: str, body: str) -> None:
        task.delay(topic, body)

    return enqueue


def create_app(secret: str | bytes | None = None, enqueue: Enqueue | None = None) -> Flask:
    """The peer's receiver (`peer_receiver.py`), queueing into Celery unless given `enqueue`."""
    return create_receiver(__name__, secret, enqueue, celery_enqueue)
