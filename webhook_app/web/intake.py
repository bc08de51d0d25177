"""The HTTP face of the service: Flask routes only, no business logic.

`POST /webhooks/commercelayer` checks the size and media type from the headers, reads at most
the body limit, verifies the signature on the raw bytes, checks the JSON:API shape, stores the
delivery durably and answers. It never calls Commerce Layer; the worker does that later.
Errors from the exception tree become JSON answers in one place (`_error`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from webhook_app import admin, metrics
from webhook_app.config import Settings
from webhook_app.errors import (
    IntakeError,
    PayloadTooLarge,
    StoreError,
    UnsupportedMediaType,
    WebhookAppError,
)
from webhook_app.events import Delivery
from webhook_app.policy import Policy, load_policy
from webhook_app.store import Store, open_store
from webhook_app.tokens import REPLAY, REPLAY_HEADER, Tokens, check_replay_token

log = logging.getLogger(__name__)

JSON_TYPES = frozenset({"application/json", "application/vnd.api+json"})
bp = Blueprint("intake", __name__)


@dataclass
class Services:
    """What the routes use, built once per process by `create_app`."""

    settings: Settings
    store: Store
    policy: Policy
    clock: Callable[[], float]


def services() -> Services:
    services: Services = current_app.extensions["webhook_app"]
    return services


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    policy: Policy | None = None,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """Build the WSGI application. Settings are read from the environment if not given."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # One byte over the limit: a streamed (chunked) body is cut at MAX_CONTENT_LENGTH without an
    # error, so _read_body must be able to read limit + 1 bytes to see that it is too long.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["webhook_app"] = Services(
        settings=settings,
        store=store or open_store(settings.database_url, timeout=settings.db_timeout),
        policy=policy or load_policy(settings.policy_path),
        clock=clock,
    )
    if settings.forwarded_hops:
        h = settings.forwarded_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=h, x_proto=h, x_host=h, x_port=h, x_prefix=h)  # type: ignore[method-assign]
    app.register_blueprint(bp)
    admin.init_app(app)
    app.register_error_handler(WebhookAppError, _error)
    app.register_error_handler(HTTPException, _http_error)
    app.before_request(_request_id)
    app.after_request(_stamp)
    metrics.init_app(app)
    return app


def _request_id() -> None:
    rid = request.headers.get("X-Request-Id", "")
    # a proxy's id is kept if it is plain ASCII letters, digits and dashes (as nginx's $request_id)
    g.request_id = rid if 0 < len(rid) <= 64 and rid.isascii() and rid.replace("-", "").isalnum() else uuid.uuid4().hex


def _stamp(resp: Response) -> Response:
    resp.headers["X-Request-Id"] = g.get("request_id", "")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _body(status: int, title: str, detail: str) -> dict[str, Any]:
    return {"errors": [{"status": str(status), "title": title, "detail": detail}]}


def _error(exc: WebhookAppError) -> tuple[Response, int]:
    status = exc.status
    if request.endpoint == "intake.intake":
        metrics.REJECTIONS.labels(metrics.REASONS.get(type(exc).__name__, "other")).inc()
    level = logging.WARNING if isinstance(exc, StoreError) else logging.INFO
    log.log(level, "request refused", extra={"status": status, "error": type(exc).__name__,
                                               "detail": exc.detail, "request_id": g.get("request_id"),
                                               "path": request.path})
    resp = jsonify(_body(status, exc.title, exc.detail))
    if isinstance(exc, StoreError):
        resp.headers["Retry-After"] = "5"
    return resp, status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    if isinstance(exc, RequestEntityTooLarge):
        return _error(PayloadTooLarge(f"body larger than {services().settings.max_body_bytes} bytes"))
    return jsonify(_body(status, exc.name, exc.description or exc.name)), status


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
    if len(body) > limit:
        raise PayloadTooLarge(f"body larger than the limit of {limit} bytes")
    return body


@bp.post("/webhooks/commercelayer")
def intake() -> tuple[Response, int]:
    with metrics.INTAKE_SECONDS.time():
        return _intake()


def _intake() -> tuple[Response, int]:
    s = services()
    body = _read_body(s.settings.max_body_bytes)
    delivery = Delivery.from_http(dict(request.headers), body, secrets=s.settings.webhook_secrets,
                                  max_depth=s.settings.max_json_depth)
    replay_of = None
    replay_token = request.headers.get(REPLAY_HEADER)
    if replay_token is not None:
        # An operator's deliberate replay: a valid token makes it a new delivery, not a duplicate.
        nonce = check_replay_token(Tokens(REPLAY, s.settings.replay_keys, s.clock), replay_token, body)
        replay_of = s.store.delivery_id_for_identity(delivery.identity)
        delivery = delivery.as_replay(nonce)
    recorded = s.store.record_delivery(delivery, now=s.clock(), replay_of=replay_of)
    status = "duplicate" if recorded.duplicate else recorded.status
    log.info("delivery", extra={"request_id": g.request_id, "topic": delivery.topic,
                                "order_id": delivery.order_id, "delivery_id": recorded.delivery_id,
                                "outcome": status, "secret": delivery.secret_label,
                                "replay": replay_token is not None})
    metrics.DELIVERIES.labels(delivery.topic, "replay" if replay_token and status == "queued" else
                              "accepted" if status == "queued" else status).inc()
    code = 202 if status == "queued" else 200
    return jsonify({"status": "accepted" if status == "queued" else status,
                    "delivery_id": recorded.delivery_id, "job_id": recorded.job_id}), code


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
        checks["database"] = "ok"
    except StoreError as exc:
        checks["database"] = exc.detail
        ok = False
    return jsonify({"status": "ready" if ok else "unavailable", "checks": checks}), 200 if ok else 503


__all__ = ["IntakeError", "create_app"]
