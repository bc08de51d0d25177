"""The intake, `POST /webhooks/commercelayer`, and the health checks `/healthz` and `/readyz`.

The intake checks the source (`WEBHOOK_APP_ALLOWED_SOURCES`, webhook_app/sources.py), the size
and the media type from the headers, reads at most the body limit, verifies the signature on the
raw bytes, checks the JSON:API shape, stores the delivery durably and answers. It never calls
Commerce Layer; the worker does that later.

It is the one hot path, so it is a plain WSGI application in front of Flask (`Intake`): Flask's
request context, routing, hooks and response objects cost about 300 us of CPU per delivery, as
much as everything the intake itself does apart from storing (BENCHMARKS.md). Every other request,
and any other method on this path, goes on to Flask. The answers are the same as Flask's would be:
JSON, `X-Request-Id`, `Cache-Control: no-store`, errors as `web.error_body` (see
docs/reference/intake.md, *The intake, `POST /webhooks/commercelayer`*).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import IO, Any

import orjson
from flask import Blueprint, Flask, Response, current_app, jsonify
from gunicorn.http.errors import NoMoreData, ParseException

from webhook_app import metrics, tracing
from webhook_app.commercelayer import credentials
from webhook_app.errors import (
    InvalidPayload,
    NotFound,
    PayloadTooLarge,
    SourceNotAllowed,
    StoreError,
    UnsupportedMediaType,
    WebhookAppError,
)
from webhook_app.events import Delivery
from webhook_app.organizations import Organization, implicit
from webhook_app.sources import REFUSED_DETAIL, Sources
from webhook_app.timefmt import iso
from webhook_app.tokens import REPLAY, REPLAY_HEADER, Tokens, check_replay_token, replay_scope
from webhook_app.web.context import Services, error_body, request_id_from, services
from webhook_app.web.errors import refusal

log = logging.getLogger(__name__)

PATH = "/webhooks/commercelayer"
#: agency mode: `POST /webhooks/commercelayer/<slug>`, one path per organization
ORG_PATH_PREFIX = PATH + "/"
JSON_TYPES = frozenset({"application/json", "application/vnd.api+json"})
_REPLAY_KEY = "HTTP_" + REPLAY_HEADER.upper().replace("-", "_")
_SPAN_ATTRIBUTES = {"http.request.method": "POST", "http.route": PATH}
_STATUS_LINES: dict[int, str] = {int(code): f"{int(code)} {code.phrase}" for code in HTTPStatus}
bp = Blueprint("intake", __name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def init_app(app: Flask, s: Services) -> None:
    app.register_blueprint(bp)
    app.wsgi_app = Intake(s, app.wsgi_app)  # type: ignore[method-assign]


@bp.post(PATH)
def _routed_to_the_intake() -> Response:  # pragma: no cover - Intake answers every POST here first
    """Never called: registered so that Flask answers 405 (Allow: POST) to other methods."""
    raise RuntimeError("POST /webhooks/commercelayer reached Flask; Intake should have answered it")


@bp.post(ORG_PATH_PREFIX + "<slug>")
def _routed_to_an_organization(slug: str) -> Response:  # pragma: no cover - Intake answers every POST here first
    """Never called: registered so that Flask answers 405 (Allow: POST) to other methods."""
    raise RuntimeError("POST /webhooks/commercelayer/<slug> reached Flask; Intake should have answered it")


class Intake:
    """`POST /webhooks/commercelayer` as WSGI; everything else goes on to `app` (Flask)."""

    def __init__(self, s: Services, app: WSGIApp) -> None:
        self.s = s
        self.app = app
        self.sources = s.settings.sources

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "POST" or (path != PATH and not path.startswith(ORG_PATH_PREFIX)):
            return self.app(environ, start_response)
        started = time.perf_counter()
        rid = request_id_from(environ.get("HTTP_X_REQUEST_ID", ""))
        extra: list[tuple[str, str]] = []
        try:
            headers = environ_headers(environ)
            parent = headers if tracing.enabled() else None
            with tracing.span("webhook intake", kind="server", parent=parent, attributes=_SPAN_ATTRIBUTES):
                status, payload = self._accept(environ, headers, rid)
        except WebhookAppError as exc:
            status, payload = self._refused(exc, rid, extra)
        except Exception:  # a bug: answered as Flask would (500, JSON), logged with its traceback
            log.exception("intake failed", extra={"request_id": rid, "path": PATH})
            status = 500
            payload = error_body(500, "Internal Server Error", "The server could not handle the delivery.")
        finally:
            metrics.INTAKE_SECONDS.observe(time.perf_counter() - started)
        counter(metrics.INTAKE_RESPONSES, str(status)).inc()
        body = orjson.dumps(payload) + b"\n"
        start_response(
            _STATUS_LINES[status],
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("X-Request-Id", rid),
                ("Cache-Control", "no-store"),
                *extra,
            ],
        )
        return [body]

    def _accept(self, environ: dict[str, Any], headers: dict[str, str], rid: str) -> tuple[int, dict[str, Any]]:
        s = self.s
        if self.sources.enabled:
            check_source(self.sources, environ)
        org = self._organization(environ.get("PATH_INFO", ""))
        body = read_body(environ, s.settings.max_body_bytes)
        delivery = Delivery.from_http(
            headers,
            body,
            secrets=org.secrets,  # this organization's only: a body another's secret signed is 401
            max_depth=s.settings.max_json_depth,
            topics=s.settings.accepted_topics,
            organization=org.slug,
        )
        replay_of = nonce = None
        replay_token = environ.get(_REPLAY_KEY)
        if replay_token is not None:
            # An operator's deliberate replay: a valid token makes it a new delivery, not a duplicate.
            nonce = check_replay_token(
                Tokens(REPLAY, s.settings.replay_keys, s.clock),
                replay_token,
                body,
                topic=replay_scope(delivery.topic, org.slug),
            )
            replay_of = s.store.delivery_id_for_identity(delivery.identity)
            delivery = delivery.as_replay(nonce)
        recorded = s.recorder.record_delivery(
            delivery, now=s.clock(), replay_of=replay_of, replay_nonce=nonce, trace_context=tracing.carrier()
        )
        status = "duplicate" if recorded.duplicate else recorded.status
        log.info(
            "delivery",
            extra={
                "request_id": rid,
                "topic": delivery.topic,
                "order_id": delivery.order_id,
                "delivery_id": recorded.delivery_id,
                "outcome": status,
                "secret": delivery.secret_label,
                "replay": replay_token is not None,
                "organization": org.label,
            },
        )
        outcome = "replay" if replay_token and status == "queued" else "accepted" if status == "queued" else status
        counter(metrics.DELIVERIES, delivery.topic, outcome).inc()
        if s.organizations is not None and s.organizations.agency:
            counter(metrics.ORG_DELIVERIES, org.slug, outcome).inc()
        answer = {
            "status": "accepted" if status == "queued" else status,
            "delivery_id": recorded.delivery_id,
            "job_id": recorded.job_id,
        }
        return (202 if status == "queued" else 200), answer

    def _organization(self, path: str) -> Organization:
        """Whose delivery this is: the plain path serves the single organization of a deployment
        without WEBHOOK_APP_ORGANIZATIONS, `PATH/<slug>` a configured organization (404 otherwise)."""
        orgs = self.s.organizations
        if path == PATH:
            if orgs is None:
                return implicit(self.s.settings)
            if orgs.agency:
                raise NotFound(f"this service serves several organizations: post to {PATH}/<organization slug>")
            return orgs.pick(None)
        org = orgs.get(path.removeprefix(ORG_PATH_PREFIX)) if orgs is not None and orgs.agency else None
        if org is None:
            raise NotFound("no such organization is configured here")
        return org

    def _refused(self, exc: WebhookAppError, rid: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
        metrics.REJECTIONS.labels(metrics.REASONS.get(type(exc).__name__, "other")).inc()
        source = {"source": exc.source or "unknown"} if isinstance(exc, SourceNotAllowed) else {}
        answer = refusal(exc, request_id=rid, path=PATH, **source)
        headers.extend(answer.headers)
        return answer.status, answer.body


def environ_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's headers by name, as `dict(werkzeug.datastructures.EnvironHeaders(environ))`
    gives them (`X-Commercelayer-Topic`; `Content-Type` and `Content-Length` when not empty) in
    one pass over the environ, without werkzeug's per-key lookups."""
    out: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key != "HTTP_CONTENT_TYPE" and key != "HTTP_CONTENT_LENGTH":
                out[key[5:].replace("_", "-").title()] = value
        elif (key == "CONTENT_TYPE" or key == "CONTENT_LENGTH") and value:
            out[key.replace("_", "-").title()] = value
    return out


@functools.lru_cache(maxsize=1024)
def counter(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once per label values: prometheus_client checks and
    locks on every `labels` call, and the intake counts two or three times per delivery. The
    labels are bounded (status codes, accepted topics, outcomes, configured organizations); the
    cache bounds them anyway."""
    return metric.labels(*labels)


def check_source(sources: Sources, environ: dict[str, Any]) -> None:
    """Refuse (403) a request whose source is not allowed, from its headers alone. The peer is
    the connection's own address (before werkzeug's ProxyFix, when `WEBHOOK_APP_FORWARDED_HOPS`
    rewrote `REMOTE_ADDR`); behind `serve` it is the client's own address too (the front runs in
    the gunicorn worker, and replaces whatever `X-Forwarded-*` the client sent); a Unix-socket
    peer has none, and is then a trusted hop whose `X-Forwarded-For` names the client."""
    peer = str(environ.get("werkzeug.proxy_fix.orig", environ).get("REMOTE_ADDR") or "")
    forwarded = str(environ.get("HTTP_X_FORWARDED_FOR", ""))
    if not sources.allows(peer, forwarded):
        source = sources.source(peer, forwarded)
        raise SourceNotAllowed(REFUSED_DETAIL, source=None if source is None else str(source))


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request's body, refused before reading when `Content-Length` says it is too large or
    the media type is not JSON; a chunked body (gunicorn sets `wsgi.input_terminated`) is read to
    one byte over the limit to see that it is too long."""
    length: int | None = None
    given = environ.get("CONTENT_LENGTH")
    if given:
        try:
            length = int(given)
        except ValueError:
            raise InvalidPayload("Content-Length is not a number") from None
        if length < 0:
            raise InvalidPayload("Content-Length is not a number")
        if length > limit:
            raise PayloadTooLarge(f"body of {length} bytes is larger than the limit of {limit} bytes")
    mimetype = str(environ.get("CONTENT_TYPE", "")).split(";", 1)[0].strip().lower()
    if mimetype not in JSON_TYPES:
        # The header's value is not echoed: an error answer never reflects what the client sent.
        raise UnsupportedMediaType("Content-Type must be application/json or application/vnd.api+json")
    stream: IO[bytes] = environ["wsgi.input"]
    try:
        if length is not None:
            body = _read_up_to(stream, length)
            if len(body) < length:
                raise InvalidPayload("the request body ended before Content-Length bytes arrived")
        elif environ.get("wsgi.input_terminated"):
            body = _read_up_to(stream, limit + 1)
        else:
            body = b""
    except (ParseException, NoMoreData):
        # gunicorn parses a chunked body while we read it: a bad chunk size, a missing CRLF, a
        # bad chunk extension or a body cut short is the client's error, not a 500.
        raise InvalidPayload("the request body is not valid chunked transfer encoding") from None
    if len(body) > limit:
        raise PayloadTooLarge(f"body larger than the limit of {limit} bytes")
    return body


def _read_up_to(stream: IO[bytes], n: int) -> bytes:
    first = stream.read(n)
    if len(first) >= n or not first:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    return jsonify({"status": "ok"}), 200


#: how long one process keeps its /readyz answer: a check commits a write, and a flood of probes
#: must not become a flood of commits in the intake's way
READYZ_CACHE_SECONDS = 1.0


def _cached(view: Callable[[], tuple[Response, int]]) -> Callable[[], tuple[Response, int]]:
    """`view`'s answer, computed at most once per READYZ_CACHE_SECONDS per app (by its clock)."""

    @functools.wraps(view)
    def cached() -> tuple[Response, int]:
        now = services().clock()
        memo = current_app.extensions.setdefault("webhook_app.readyz", {})
        hit = memo.get("answer")
        if hit is not None and 0 <= now - hit[0] < READYZ_CACHE_SECONDS:
            return Response(hit[1], mimetype="application/json"), hit[2]
        resp, status = view()
        memo["answer"] = (now, resp.get_data(), status)
        return resp, status

    return cached


@bp.get("/readyz")
@_cached
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
    unusable = s.settings.not_ready_reasons() + (s.organizations.not_ready_reasons() if s.organizations else [])
    checks["webhook_secrets"] = "; ".join(unusable) or ", ".join(w.label for w in s.settings.webhook_secrets)
    ok = ok and not unusable
    problem = s.recorder.writer_problem()
    if problem is not None:  # deliveries are still committed (by each worker), but this needs an operator
        checks["commit_writer"] = problem
        ok = False
    if ok and s.organizations is not None and s.organizations.agency:
        ok = organizations_credentials_check(s, checks)
    elif ok and not s.settings.shadow:  # shadow mode calls no one: it needs no credentials
        ok, checks["commercelayer_credentials"] = credentials_check(s)
    return jsonify({"status": "ready" if ok else "unavailable", "checks": checks}), 200 if ok else 503


def organizations_credentials_check(s: Services, checks: dict[str, str]) -> bool:
    """Agency mode: each enforce-mode organization's credentials, one check each
    (`commercelayer_credentials:<slug>`); any refused is not ready, the organization named."""
    ok = True
    for org in s.organizations or ():
        if org.shadow:  # calls no one: needs no credentials
            continue
        good, said = credentials_check(s, org.slug)
        checks[credentials.status_name(org.slug)] = said if good else f"organization {org.slug}: {said}"
        ok = ok and good
    return ok


def credentials_check(s: Services, organization: str = "") -> tuple[bool, str]:
    """What the worker last found of the Commerce Layer credentials (agency mode: `organization`'s):
    refused is not ready (no job can run), with why; accepted, or not asked yet, is."""
    try:
        status = s.store.get_status(credentials.status_name(organization))
    except StoreError as exc:
        return False, exc.detail
    if status is None:
        return True, "not checked yet (the worker checks them at start)"
    if status.state == credentials.REFUSED:
        return False, f"{status.reason} (since {iso(status.since)}; jobs are held, not failed, until it accepts them)"
    return True, f"accepted (last checked {iso(status.updated_at)})"
