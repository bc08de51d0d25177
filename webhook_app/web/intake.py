"""The intake, `POST /webhooks/commercelayer`, and the health checks `/healthz` and `/readyz`.

The intake checks the size and media type from the headers, reads at most
the body limit, verifies the signature on the raw bytes, checks the JSON:API shape, stores the
delivery durably and answers. It never calls Commerce Layer; the worker does that later.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, g, jsonify, request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import RequestEntityTooLarge

from webhook_app import tracing
from webhook_app.errors import InvalidPayload, PayloadTooLarge, StoreError, UnsupportedMediaType
from webhook_app.events import Delivery
from webhook_app.tokens import REPLAY, REPLAY_HEADER, Tokens, check_replay_token
from webhook_app.web import metrics
from webhook_app.web.context import services

log = logging.getLogger(__name__)

JSON_TYPES = frozenset({"application/json", "application/vnd.api+json"})
bp = Blueprint("intake", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _read_body(limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body of {length} bytes is larger than the limit of {limit} bytes")
    if request.mimetype not in JSON_TYPES:
        # The header's value is not echoed: an error answer never reflects what the client sent.
        raise UnsupportedMediaType("Content-Type must be application/json or application/vnd.api+json")
    try:
        body = request.stream.read(limit + 1)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"body larger than the limit of {limit} bytes") from None
    except (ParseException, NoMoreData):
        # gunicorn parses a chunked body while we read it: a bad chunk size, a missing CRLF, a
        # bad chunk extension or a body cut short is the client's error, not a 500.
        raise InvalidPayload("the request body is not valid chunked transfer encoding") from None
    if len(body) > limit:
        raise PayloadTooLarge(f"body larger than the limit of {limit} bytes")
    return body


@bp.post("/webhooks/commercelayer")
def intake() -> tuple[Response, int]:
    attrs = {"http.request.method": "POST", "http.route": "/webhooks/commercelayer"}
    with (
        metrics.INTAKE_SECONDS.time(),
        tracing.span("webhook intake", kind="server", parent=dict(request.headers), attributes=attrs),
    ):
        return _intake()


def _intake() -> tuple[Response, int]:
    s = services()
    body = _read_body(s.settings.max_body_bytes)
    delivery = Delivery.from_http(
        dict(request.headers),
        body,
        secrets=s.settings.webhook_secrets,
        max_depth=s.settings.max_json_depth,
        topics=s.settings.accepted_topics,
    )
    replay_of = None
    replay_token = request.headers.get(REPLAY_HEADER)
    if replay_token is not None:
        # An operator's deliberate replay: a valid token makes it a new delivery, not a duplicate.
        nonce = check_replay_token(
            Tokens(REPLAY, s.settings.replay_keys, s.clock), replay_token, body, topic=delivery.topic
        )
        replay_of = s.store.delivery_id_for_identity(delivery.identity)
        delivery = delivery.as_replay(nonce)
    recorded = s.recorder.record_delivery(delivery, now=s.clock(), replay_of=replay_of, trace_context=tracing.carrier())
    status = "duplicate" if recorded.duplicate else recorded.status
    log.info(
        "delivery",
        extra={
            "request_id": g.request_id,
            "topic": delivery.topic,
            "order_id": delivery.order_id,
            "delivery_id": recorded.delivery_id,
            "outcome": status,
            "secret": delivery.secret_label,
            "replay": replay_token is not None,
        },
    )
    metrics.DELIVERIES.labels(
        delivery.topic,
        "replay" if replay_token and status == "queued" else "accepted" if status == "queued" else status,
    ).inc()
    code = 202 if status == "queued" else 200
    return jsonify(
        {
            "status": "accepted" if status == "queued" else status,
            "delivery_id": recorded.delivery_id,
            "job_id": recorded.job_id,
        }
    ), code


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    return jsonify({"status": "ok"}), 200


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    s = services()
    checks: dict[str, str] = {"policy": f"{len(s.policy.rules)} rules"}
    ok = True
    try:
        s.store.ping()
        s.store.check_schema()
        s.store.check_writable()
        checks["database"] = "ok"
    except StoreError as exc:
        checks["database"] = exc.detail
        ok = False
    return jsonify({"status": "ready" if ok else "unavailable", "checks": checks}), 200 if ok else 503
