"""The receiver both peers share (`peer_celery.py`, `peer_procrastinate.py`): one Flask view.

It reads the raw body, checks `X-CommerceLayer-Signature` with the baseline's own check
(`baseline_app.signed_body`: base64 HMAC-SHA256, `hmac.compare_digest`), hands the topic and the
body to the peer's queue through an `Enqueue` function (Celery's `.delay`, procrastinate's
`.defer`; a fake in the tests) and answers 202. Only the queue differs between the peers, so only
the queue is theirs.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, request

from bench.baseline_app import MAX_BODY_BYTES, add_healthz, invalid_signature, secret_key, signed_body

Enqueue = Callable[[str, str], None]


def create_receiver(
    name: str, secret: str | bytes | None, enqueue: Enqueue | None, default_enqueue: Callable[[], Enqueue]
) -> Flask:
    """The Flask app `name`: `secret` (or $BENCH_SECRET) verified, then `enqueue` (or the queue
    `default_enqueue()` opens, only once the secret is known) given (topic, body)."""
    key_bytes = secret_key(secret)
    send = enqueue or default_enqueue()
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.post("/webhooks/commercelayer")
    def receive() -> Response:
        body = signed_body(key_bytes)
        if body is None:
            return invalid_signature()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return Response('{"error":"body is not UTF-8"}', 400, content_type="application/json")
        send(request.headers.get("X-CommerceLayer-Topic", ""), text)
        return Response('{"status":"queued"}', 202, content_type="application/json")

    add_healthz(app)
    return app
