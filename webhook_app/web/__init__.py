"""The HTTP face of the service: `create_app(settings)` builds the Flask app from its parts.

    intake        POST /webhooks/commercelayer, /healthz, /readyz
    admin_api     the admin JSON API          admin_page    the admin HTML page
    presentation  how stored records are shown
    metrics       Prometheus /metrics         context       the services each route uses
    errors        errors as HTTP answers (status, JSON body, Retry-After, the log line)

Errors from the exception tree become JSON answers in one place (`errors.refusal`, which the
intake uses too). No route calls Commerce Layer; the worker does that later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from webhook_app.config import Settings
from webhook_app.errors import PayloadTooLarge, WebhookAppError
from webhook_app.organizations import load_organizations
from webhook_app.policy import Policy, load_policy
from webhook_app.store import Store, group_commit, open_store
from webhook_app.web import admin_api, admin_page, intake, metrics
from webhook_app.web.context import EXTENSION, Services, error_body, request_id_from, services
from webhook_app.web.errors import refusal

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    policy: Policy | None = None,
    clock: Callable[[], float] = time.time,
    commit_channel: group_commit.Channel | None = None,
) -> Flask:
    """Build the WSGI application. Settings are read from the environment if not given.
    `commit_channel`: how to reach the commit writer `webhook-app web` started (runtime.py)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # One byte over the limit: a streamed (chunked) body is cut at MAX_CONTENT_LENGTH without an
    # error, so the intake must be able to read limit + 1 bytes to see that it is too long.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]
    own_store = store is None
    store = store or open_store(settings.database_url, timeout=settings.db_timeout)
    # The commit writer `web` started serves the database of the settings; a store handed in (tests)
    # is used directly.
    writer = commit_channel if own_store and settings.group_commit else None
    app.extensions[EXTENSION] = services = Services(
        settings=settings,
        store=store,
        policy=policy or load_policy(settings.policy_path),
        clock=clock,
        recorder=group_commit.CommitClient(store, writer, timeout=settings.db_timeout),
        organizations=load_organizations(settings),
    )
    intake.init_app(app, services)  # the intake answers before Flask sees the request
    if settings.forwarded_hops:
        h = settings.forwarded_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=h, x_proto=h, x_host=h, x_port=h, x_prefix=h)  # type: ignore[method-assign]
    admin_api.init_app(app)
    admin_page.init_app(app)
    metrics.init_app(app)
    app.register_error_handler(WebhookAppError, _error)
    app.register_error_handler(HTTPException, _http_error)
    app.before_request(_request_id)
    app.after_request(_stamp)
    return app


def _request_id() -> None:
    g.request_id = request_id_from(request.headers.get("X-Request-Id", ""))


def _stamp(resp: Response) -> Response:
    resp.headers["X-Request-Id"] = g.get("request_id", "")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _error(exc: WebhookAppError) -> tuple[Response, int]:
    answer = refusal(exc, request_id=g.get("request_id"), path=request.path)
    resp = jsonify(answer.body)
    resp.headers.extend(answer.headers)
    return resp, answer.status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    if isinstance(exc, RequestEntityTooLarge):
        return _error(PayloadTooLarge(f"body larger than {services().settings.max_body_bytes} bytes"))
    return jsonify(error_body(status, exc.name, exc.description or exc.name)), status


__all__ = ["Services", "create_app"]
