"""The receiver both peers share (`peer_celery.py`, `peer_procrastinate.py`): one Flask view.

It reads the raw body, checks `X-CommerceLayer-Signature` exactly as the baseline does (base64
HMAC-SHA256, `hmac.compare_digest`), hands the topic and the body to the peer's queue through an
`Enqueue` function (Celery's `.delay`, procrastinate's `.defer`; a fake in the tests) and answers
202. Only the queue differs between the peers, so only the queue is theirs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable

from flask import Flask, Response, request

MAX_BODY_BYTES = 1_048_576  # as the baseline and the service

Enqueue = Callable[[str, str], None]


def create_receiver(
    name: str, secret: str | bytes | None, enqueue: Enqueue | None, default_enqueue: Callable[[], Enqueue]
) -> Flask:
    """The Flask app `name`: `secret` (or $BENCH_SECRET) verified, then `enqueue` (or the queue
    `default_enqueue()` opens, only once the secret is known) given (topic, body)."""
    key = secret if secret is not None else os.environ.get("BENCH_SECRET", "")
    key_bytes = key.encode() if isinstance(key, str) else key
    if not key_bytes:
        raise RuntimeError("BENCH_SECRET is not set")
    send = enqueue or default_enqueue()
    app = Flask(name)
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
