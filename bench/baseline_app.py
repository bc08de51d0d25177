"""The baseline: the smallest honest hand-written Commerce Layer receiver.

A stateless Flask app that reads the raw body, checks `X-CommerceLayer-Signature` (base64
HMAC-SHA256 of the body with the shared secret, compared in constant time) and answers 200.
It stores nothing, so it is the upper bound a durable receiver is compared with. It imports
nothing from webhook_app, so its memory is Flask's and gunicorn's alone.

The benchmark runs it with the gunicorn command line built from webhook_app's own gunicorn
defaults (same worker class, worker count, timeouts, keep-alive and request limits):

    BENCH_SECRET=... gunicorn --workers 2 --worker-class sync ... 'bench.baseline_app:create_app()'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from flask import Flask, Response, request

MAX_BODY_BYTES = 1_048_576  # the service's default limit, so both refuse the same bodies


def create_app(secret: str | bytes | None = None) -> Flask:
    key = secret if secret is not None else os.environ.get("BENCH_SECRET", "")
    key_bytes = key.encode() if isinstance(key, str) else key
    if not key_bytes:
        raise RuntimeError("BENCH_SECRET is not set")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.post("/webhooks/commercelayer")
    def receive() -> Response:
        body = request.get_data(cache=False)
        given = request.headers.get("X-CommerceLayer-Signature", "").encode("utf-8", "replace")
        expected = base64.b64encode(hmac.new(key_bytes, body, hashlib.sha256).digest())
        if not hmac.compare_digest(expected, given):
            return Response('{"error":"invalid signature"}', 401, content_type="application/json")
        return Response('{"status":"ok"}', 200, content_type="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response('{"status":"ok"}', 200, content_type="application/json")

    return app
