"""The operator's view: a JSON admin API and a small server-rendered admin page.

API, authenticated by `Authorization: Bearer <admin token>` (and nothing else, so it needs no
CSRF defence): `GET /admin/deliveries`, `GET /admin/deliveries/<id>`,
`POST /admin/deliveries/<id>/replay`, `POST /admin/dead-letters/<job id>/requeue`,
`GET /admin/stats`.

Page, authenticated by a cookie holding the same kind of token, pasted once into the login form at
`GET /admin/`: the cookie is HttpOnly, SameSite=Strict, path /admin, Secure over https. Every
form that changes state carries a CSRF token, an HMAC of the admin token under the admin keys,
checked on POST before anything happens.

With no admin keys configured every admin route answers 404 saying so. Nothing here returns a
secret: stored headers that could carry a credential are dropped again on the way out, and error
texts are scrubbed of the configured keys and secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response as BaseResponse

from webhook_app.errors import Conflict, NotFound, Unauthorized, WebhookAppError
from webhook_app.events import TOPIC_PATTERN
from webhook_app.logs import settings_secrets
from webhook_app.store import DeliveryFilter, Recorded, Store, StoredDelivery
from webhook_app.tokens import ADMIN, REPLAY_HEADER, TokenError, Tokens

if TYPE_CHECKING:
    from webhook_app.web import Services

log = logging.getLogger(__name__)

COOKIE = "webhook_app_admin"
CSRF_FIELD = "csrf_token"
STATUSES = ("queued", "ignored", "pending", "running", "done", "dead")
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
PAGE_DEAD_LETTERS = 100
MAX_ID = 2**63 - 1
_CSRF_SALT = b"webhook-app.admin.csrf.v1\x00"
# Headers never shown, even though intake does not store most of them.
_HIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                             "x-admin-token", REPLAY_HEADER.lower()})
_LIST_PARAMS = ("topic", "order_id", "status", "since", "until", "decision", "limit", "before_id")
# How many jobs to look through to tell "not dead" (409) from "no such job" (404); see _job_state.
_JOB_SCAN_LIMIT = 5000

api = Blueprint("admin_api", __name__, url_prefix="/admin")
page = Blueprint("admin_page", __name__, url_prefix="/admin")


class InvalidQuery(WebhookAppError):
    status = 400
    title = "Invalid query"


class AdminDisabled(NotFound):
    """No admin keys are configured, so there is no admin API or page."""


class CsrfRefused(WebhookAppError):
    """A page form came without the CSRF token of the session it claims to be from."""

    status = 403
    title = "Forbidden"


def init_app(app: Flask) -> None:
    """Add the admin API and page to the app `create_app` built."""
    app.register_blueprint(api)
    app.register_blueprint(page)
    app.add_template_filter(_when, "admin_when")
    app.add_template_filter(_age, "admin_age")


def _services() -> Services:
    return current_app.extensions["webhook_app"]


def _store() -> Store:
    return _services().store


def _tokens() -> Tokens:
    s = _services()
    return Tokens(ADMIN, s.settings.admin_keys, s.clock)


def _now() -> float:
    return _services().clock()


def _require_enabled() -> None:
    if not _services().settings.admin_keys:
        raise AdminDisabled("the admin API and page are disabled: "
                            "set WEBHOOK_APP_ADMIN_KEYS to enable them")


def _check_id(value: int, what: str) -> int:
    if value > MAX_ID:
        raise NotFound(f"no {what} {value}")
    return value


# --- the API ----------------------------------------------------------------------------------


@api.before_request
def _api_auth() -> None:
    _require_enabled()
    header = request.headers.get("Authorization")
    if header is None:
        raise TokenError("missing admin token: send `Authorization: Bearer <token>` "
                         "(make one with `webhook-app admin-token`)")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("the Authorization header must be `Bearer <admin token>`")
    _tokens().check(token.strip())


@api.after_request
def _api_headers(resp: Response) -> Response:
    if resp.status_code == 401:
        challenge = 'Bearer realm="webhook-app admin"'
        if request.headers.get("Authorization"):
            challenge += ', error="invalid_token"'
        resp.headers["WWW-Authenticate"] = challenge
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


@api.get("/deliveries")
def list_deliveries() -> tuple[Response, int]:
    flt = delivery_filter(request.args)
    rows = _store().list_deliveries(replace(flt, limit=flt.limit + 1))
    more = len(rows) > flt.limit
    rows = rows[:flt.limit]
    return jsonify({"deliveries": [delivery_summary(d) for d in rows],
                    "next_before_id": rows[-1].id if more and rows else None}), 200


@api.get("/deliveries/<int:delivery_id>")
def get_delivery(delivery_id: int) -> tuple[Response, int]:
    return jsonify(delivery_detail(_load(delivery_id))), 200


@api.post("/deliveries/<int:delivery_id>/replay")
def replay_delivery(delivery_id: int) -> tuple[Response, int]:
    recorded = _replay(delivery_id)
    return jsonify({"status": "accepted" if recorded.status == "queued" else recorded.status,
                    "delivery_id": recorded.delivery_id, "job_id": recorded.job_id,
                    "replay_of": _store_replay_root(recorded.delivery_id)}), 202


@api.post("/dead-letters/<int:job_id>/requeue")
def requeue_dead_letter(job_id: int) -> tuple[Response, int]:
    _requeue(job_id)
    return jsonify({"status": "requeued", "job_id": job_id, "state": "pending"}), 202


@api.get("/stats")
def stats() -> tuple[Response, int]:
    return jsonify(stats_document(_store(), now=_now())), 200


# --- what the API and the page share ------------------------------------------------------------


def delivery_filter(args: MultiDict[str, str]) -> DeliveryFilter:
    """A DeliveryFilter from query parameters; InvalidQuery (400) for anything unexpected."""
    unknown = sorted(set(args.keys()) - set(_LIST_PARAMS))
    if unknown:
        raise InvalidQuery(f"unknown query parameter {unknown[0][:40]!r}; "
                           f"allowed: {', '.join(_LIST_PARAMS)}")
    values: dict[str, str] = {}
    for name in _LIST_PARAMS:
        given = args.getlist(name)
        if len(given) > 1:
            raise InvalidQuery(f"{name} may be given once")
        if given and given[0].strip():
            values[name] = given[0].strip()
    topic = values.get("topic")
    if topic is not None and not TOPIC_PATTERN.match(topic):
        raise InvalidQuery("topic must look like orders.place")
    order_id = values.get("order_id")
    if order_id is not None and len(order_id) > 128:
        raise InvalidQuery("order_id is longer than 128 characters")
    status = values.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidQuery(f"status must be one of {', '.join(STATUSES)}")
    decision = values.get("decision")
    if decision is not None and (len(decision) > 64 or not re.fullmatch(r"[\w.:-]+", decision)):
        raise InvalidQuery("decision must be a rule, an action or an outcome name")
    limit = _int_param("limit", values.get("limit"), default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    before_id = _int_param("before_id", values.get("before_id"), default=None, low=1, high=MAX_ID)
    since = _time_param("since", values.get("since"))
    until = _time_param("until", values.get("until"))
    return DeliveryFilter(topic=topic, order_id=order_id, status=status, since=since, until=until,
                          decision=decision, limit=limit, before_id=before_id)


def _int_param(name: str, raw: str | None, *, default: int | None, low: int, high: int) -> Any:
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,19}", raw) or not low <= int(raw) <= high:
        raise InvalidQuery(f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def _time_param(name: str, raw: str | None) -> float | None:
    if raw is None:
        return None
    if re.fullmatch(r"\d{1,12}(\.\d{1,9})?", raw):
        return float(raw)
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidQuery(f"{name} must be ISO 8601 (like 2026-01-31T12:00:00Z) "
                           "or seconds since the epoch") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso(t: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 in UTC, to the millisecond."""
    if t is None:
        return None
    when = datetime.fromtimestamp(float(t), UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _scrub(text: Any) -> Any:
    """An error or reason text with any configured secret replaced (defence in depth)."""
    if not isinstance(text, str):
        return text
    for secret in settings_secrets(_services().settings):
        if len(secret) >= 6:
            text = text.replace(secret, "[redacted]")
    return text


def safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _HIDDEN_HEADERS}


def _job(job: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {"id": job["id"], "state": job["state"], "attempts": job["attempts"],
            "last_error": _scrub(job.get("last_error")),
            "next_attempt_at": iso(job.get("next_attempt_at")),
            "lease_owner": job.get("lease_owner"),
            "lease_expires_at": iso(job.get("lease_expires_at")),
            "finished_at": iso(job.get("finished_at"))}


def _decision(d: Mapping[str, Any]) -> dict[str, Any]:
    return {"rule": d.get("rule"), "action": d.get("action"), "outcome": d.get("outcome"),
            "mode": d.get("mode"), "guard": d.get("guard"), "reason": _scrub(d.get("reason")),
            "wallet_entry_id": d.get("wallet_entry_id"), "decided_at": iso(d.get("decided_at"))}


def _attempt(a: Mapping[str, Any]) -> dict[str, Any]:
    return {"number": a.get("number"), "worker": a.get("worker"),
            "started_at": iso(a.get("started_at")), "finished_at": iso(a.get("finished_at")),
            "outcome": a.get("outcome"), "error": _scrub(a.get("error"))}


def delivery_summary(d: StoredDelivery) -> dict[str, Any]:
    return {"id": d.id, "topic": d.topic, "order_id": d.order_id, "resource_type": d.resource_type,
            "resource_id": d.resource_id, "received_at": iso(d.received_at), "status": d.status,
            "replay_of": d.replay_of, "job": _job(d.job),
            "decision": _decision(d.decisions[-1]) if d.decisions else None}


def delivery_detail(d: StoredDelivery) -> dict[str, Any]:
    return {**delivery_summary(d), "identity": d.identity, "signed_with": d.secret_label,
            "headers": safe_headers(d.headers), "body": d.body.decode("utf-8", "replace"),
            "decisions": [_decision(x) for x in d.decisions],
            "attempts": [_attempt(a) for a in d.attempts]}


def stats_document(store: Store, *, now: float) -> dict[str, Any]:
    q = store.queue_stats(now=now)
    counts = store.decision_counts()
    by: dict[str, dict[str, int]] = {"rule": defaultdict(int), "action": defaultdict(int),
                                     "outcome": defaultdict(int)}
    for rule, action, outcome, n in counts:
        by["rule"][rule] += n
        by["action"][action] += n
        by["outcome"][outcome] += n
    return {"queue": {"pending": q.pending, "running": q.running, "done": q.done, "dead": q.dead,
                      "oldest_pending_age_seconds": round(q.oldest_pending_age, 3)},
            "decisions": [{"rule": r, "action": a, "outcome": o, "count": n}
                          for r, a, o, n in counts],
            "decisions_by_rule": dict(by["rule"]), "decisions_by_action": dict(by["action"]),
            "decisions_by_outcome": dict(by["outcome"])}


def _load(delivery_id: int) -> StoredDelivery:
    found = _store().get_delivery(_check_id(delivery_id, "delivery"))
    if found is None:
        raise NotFound(f"no delivery {delivery_id}")
    return found


def _replay(delivery_id: int) -> Recorded:
    delivery_id = _check_id(delivery_id, "delivery")
    recorded = _store().record_replay(delivery_id, nonce=secrets.token_hex(8), now=_now())
    if recorded is None:
        raise NotFound(f"no delivery {delivery_id}")
    log.info("admin replay", extra={"request_id": g.get("request_id"), "delivery_id": delivery_id,
                                    "new_delivery_id": recorded.delivery_id,
                                    "job_id": recorded.job_id})
    return recorded


def _store_replay_root(delivery_id: int) -> int | None:
    d = _store().get_delivery(delivery_id)
    return None if d is None else d.replay_of


def _requeue(job_id: int) -> None:
    store = _store()
    if store.requeue(_check_id(job_id, "dead letter with job id"), now=_now()):
        log.info("admin requeue", extra={"request_id": g.get("request_id"), "job_id": job_id})
        return
    state = _job_state(store, job_id)
    if state is None:
        raise NotFound(f"no dead letter with job id {job_id}")
    raise Conflict(f"job {job_id} is {state}, not dead: only dead letters can be requeued")


def _job_state(store: Store, job_id: int) -> str | None:
    """The state of job `job_id` if it is found among the pending, running and recent done jobs.

    The store has no lookup by job id, so this pages through deliveries by job state, newest
    first, up to _JOB_SCAN_LIMIT of them; a job not found that way is reported as no dead letter
    (404), which is true either way."""
    seen = 0
    for state in ("pending", "running", "done", "dead"):
        before: int | None = None
        while seen < _JOB_SCAN_LIMIT:
            flt = DeliveryFilter(status=state, limit=MAX_LIMIT, before_id=before)
            rows = store.list_deliveries(flt)
            for d in rows:
                if d.job is not None and d.job["id"] == job_id:
                    return str(d.job["state"])
            seen += len(rows)
            if len(rows) < MAX_LIMIT:
                break
            before = rows[-1].id
    return None


# --- the page ---------------------------------------------------------------------------------

_NOTICES = {
    "requeued": "Job {job} was requeued; a worker will pick it up.",
    "replayed": "Replay queued: this is the new delivery.",
    "not_dead": "Job {job} is not a dead letter any more; nothing was requeued.",
    "no_dead_letter": "There is no dead letter with job id {job}.",
    "logged_out": "You are logged out.",
}


@page.before_request
def _page_enabled() -> None:
    g.csp_nonce = secrets.token_urlsafe(16)
    _require_enabled()


@page.after_request
def _page_headers(resp: Response) -> Response:
    nonce = g.get("csp_nonce", "")
    resp.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


@page.errorhandler(Unauthorized)
def _page_unauthorized(exc: Unauthorized) -> tuple[BaseResponse, int]:
    resp = current_app.make_response(_render("admin/login.html", notice=None,
                                             error=f"Please log in again: {exc.detail}."))
    _forget_cookie(resp)
    return resp, 401


@page.errorhandler(WebhookAppError)
def _page_error(exc: WebhookAppError) -> tuple[str, int]:
    return _render("admin/message.html", title=exc.title, detail=exc.detail), exc.status


def _cookie_path() -> str:
    return request.script_root + "/admin"


def _forget_cookie(resp: BaseResponse) -> None:
    resp.delete_cookie(COOKIE, path=_cookie_path(), secure=request.is_secure, httponly=True,
                       samesite="Strict")


def _page_login() -> str:
    """The admin token from the cookie, checked; TokenError (the login form) otherwise."""
    token = request.cookies.get(COOKIE)
    _tokens().check(token)
    g.admin_token = token
    return token  # type: ignore[return-value]


def csrf_token(token: str, key: str) -> str:
    return hmac.new(key.encode(), _CSRF_SALT + token.encode(), hashlib.sha256).hexdigest()


def _check_csrf(token: str) -> None:
    sent = request.form.get(CSRF_FIELD, "")
    keys = _services().settings.admin_keys
    if not any(hmac.compare_digest(sent, csrf_token(token, key)) for key in keys):
        raise CsrfRefused("the form's CSRF token is missing or wrong; "
                          "reload the page and try again")


def _render(template: str, **context: Any) -> str:
    token = g.get("admin_token")
    csrf = csrf_token(token, _services().settings.admin_keys[-1]) if token else ""
    return render_template(template, csrf=csrf, csrf_field=CSRF_FIELD, logged_in=token is not None,
                           nonce=g.get("csp_nonce", ""), **context)


def _notice() -> str | None:
    text = _NOTICES.get(request.args.get("notice", ""))
    job = request.args.get("job", "")
    if text is None:
        return None
    return text.format(job=int(job) if job.isdigit() and len(job) < 20 else "?")


@page.get("/")
def index() -> BaseResponse | tuple[str, int]:
    if request.cookies.get(COOKIE) is None:
        return _render("admin/login.html", notice=_notice(), error=None), 200
    _page_login()
    store, now = _store(), _now()
    args = MultiDict([(k, v) for k, v in request.args.items(multi=True)
                      if k not in ("notice", "job")])
    error = None
    try:
        flt = delivery_filter(args)
    except InvalidQuery as exc:
        error, flt = exc.detail, DeliveryFilter(limit=DEFAULT_LIMIT)
    rows = store.list_deliveries(replace(flt, limit=flt.limit + 1))
    older = rows[flt.limit - 1].id if len(rows) > flt.limit else None
    rows = rows[:flt.limit]
    dead = store.list_deliveries(DeliveryFilter(status="dead", limit=PAGE_DEAD_LETTERS))
    st = stats_document(store, now=now)
    by_rule_action: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for row in st["decisions"]:
        by_rule_action[(row["rule"], row["action"])][row["outcome"]] = row["count"]
    filters = {k: v for k, v in args.items() if k in _LIST_PARAMS and k != "before_id"}
    older_args = {**filters, "before_id": older} if older else None
    return _render("admin/index.html", deliveries=[delivery_summary(d) for d in rows],
                   dead=[delivery_summary(d) for d in dead], stats=st, notice=_notice(),
                   error=error,
                   by_rule_action=sorted(by_rule_action.items()), filters=filters,
                   older_args=older_args, statuses=STATUSES), 400 if error else 200


@page.post("/login")
def login() -> BaseResponse | tuple[str, int]:
    token = request.form.get("token", "").strip()
    try:
        _tokens().check(token)
    except TokenError as exc:
        log.info("admin login refused",
                 extra={"request_id": g.get("request_id"), "detail": exc.detail})
        error = f"That token was refused: {exc.detail}."
        return _render("admin/login.html", notice=None, error=error), 401
    resp = redirect(url_for("admin_page.index"), code=303)
    resp.set_cookie(COOKIE, token, path=_cookie_path(), secure=request.is_secure, httponly=True,
                    samesite="Strict")
    log.info("admin login", extra={"request_id": g.get("request_id")})
    return resp


@page.post("/logout")
def logout() -> BaseResponse:
    token = request.cookies.get(COOKIE)
    if token:
        try:
            _tokens().check(token)
        except TokenError:
            token = None
    if token:
        _check_csrf(token)
    resp = redirect(url_for("admin_page.index", notice="logged_out"), code=303)
    _forget_cookie(resp)
    return resp


@page.get("/view/deliveries/<int:delivery_id>")
def delivery_page(delivery_id: int) -> str:
    _page_login()
    d = _load(delivery_id)
    detail = delivery_detail(d)
    return _render("admin/delivery.html", d=detail, body=_pretty(d.body),
                   notice=_notice())


@page.post("/view/deliveries/<int:delivery_id>/replay")
def replay_page(delivery_id: int) -> BaseResponse:
    _check_csrf(_page_login())
    recorded = _replay(delivery_id)
    to = url_for("admin_page.delivery_page", delivery_id=recorded.delivery_id, notice="replayed")
    return redirect(to, code=303)


@page.post("/view/dead-letters/<int:job_id>/requeue")
def requeue_page(job_id: int) -> BaseResponse:
    _check_csrf(_page_login())
    try:
        _requeue(job_id)
        notice = "requeued"
    except Conflict:
        notice = "not_dead"
    except NotFound:
        notice = "no_dead_letter"
    return redirect(url_for("admin_page.index", notice=notice, job=job_id), code=303)


def _pretty(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _when(t: float | str | None) -> str:
    """For the page: `2026-01-31 12:00:00Z` from seconds or from ISO 8601 as `iso` writes it."""
    s = t if isinstance(t, str) or t is None else iso(t)
    return "" if not s else s[:19].replace("T", " ") + "Z"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
