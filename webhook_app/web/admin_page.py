"""The admin page: server-rendered HTML under `/admin/`, for an operator with a browser.

Authenticated by a cookie holding an admin token, pasted once into the login form at
`GET /admin/`: the cookie is HttpOnly, SameSite=Strict, path /admin, Secure over https. Every
form that changes state carries a CSRF token, an HMAC of the admin token under the admin keys,
checked on POST before anything happens. The page sends a CSP with a per-request nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections import defaultdict
from dataclasses import replace
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response as BaseResponse

from webhook_app import wallet_activity
from webhook_app.errors import Conflict, NotFound, Unauthorized, WebhookAppError
from webhook_app.states import JobState
from webhook_app.store import DeliveryFilter
from webhook_app.tokens import TokenError
from webhook_app.web import presentation
from webhook_app.web.admin_api import load, now, presenter, replay, requeue, require_enabled, store, tokens
from webhook_app.web.context import services
from webhook_app.web.presentation import DEFAULT_LIMIT, LIST_PARAMS, STATUSES, InvalidQuery, delivery_filter

log = logging.getLogger(__name__)

COOKIE = "webhook_app_admin"
CSRF_FIELD = "csrf_token"
PAGE_DEAD_LETTERS = 100
PAGE_OPERATIONS = 50
WALLET_DAYS = 14
_CSRF_SALT = b"webhook-app.admin.csrf.v1\x00"

page = Blueprint("admin_page", __name__, url_prefix="/admin")


class CsrfRefused(WebhookAppError):
    """A page form came without the CSRF token of the session it claims to be from."""

    status = 403
    title = "Forbidden"


def init_app(app: Flask) -> None:
    app.register_blueprint(page)
    app.add_template_filter(presentation.when, "admin_when")
    app.add_template_filter(presentation.age, "admin_age")


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
    require_enabled()


@page.after_request
def _page_headers(resp: Response) -> Response:
    nonce = g.get("csp_nonce", "")
    resp.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


@page.errorhandler(Unauthorized)
def _page_unauthorized(exc: Unauthorized) -> tuple[BaseResponse, int]:
    resp = current_app.make_response(
        _render("admin/login.html", notice=None, error=f"Please log in again: {exc.detail}.")
    )
    _forget_cookie(resp)
    return resp, 401


@page.errorhandler(WebhookAppError)
def _page_error(exc: WebhookAppError) -> tuple[str, int]:
    return _render("admin/message.html", title=exc.title, detail=exc.detail), exc.status


def _cookie_path() -> str:
    return request.script_root + "/admin"


def _forget_cookie(resp: BaseResponse) -> None:
    resp.delete_cookie(COOKIE, path=_cookie_path(), secure=request.is_secure, httponly=True, samesite="Strict")


def _page_login() -> str:
    """The admin token from the cookie, checked; TokenError (the login form) otherwise."""
    token = request.cookies.get(COOKIE)
    tokens().check(token)
    g.admin_token = token
    return token  # type: ignore[return-value]


def csrf_token(token: str, key: str) -> str:
    return hmac.new(key.encode(), _CSRF_SALT + token.encode(), hashlib.sha256).hexdigest()


def _check_csrf(token: str) -> None:
    # As bytes: compare_digest refuses a str that is not ASCII (TypeError: a 500), and the form is the client's
    sent = request.form.get(CSRF_FIELD, "").encode("utf-8", "surrogateescape")
    keys = services().settings.admin_keys
    if not any(hmac.compare_digest(sent, csrf_token(token, key).encode()) for key in keys):
        raise CsrfRefused("the form's CSRF token is missing or wrong; reload the page and try again")


def _render(template: str, **context: Any) -> str:
    token = g.get("admin_token")
    csrf = csrf_token(token, services().settings.admin_keys[-1]) if token else ""
    return render_template(
        template, csrf=csrf, csrf_field=CSRF_FIELD, logged_in=token is not None, nonce=g.get("csp_nonce", ""), **context
    )


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
    st, at = store(), now()
    args = MultiDict([(k, v) for k, v in request.args.items(multi=True) if k not in ("notice", "job")])
    error = None
    try:
        flt = delivery_filter(args)
    except InvalidQuery as exc:
        error, flt = exc.detail, DeliveryFilter(limit=DEFAULT_LIMIT)
    rows = st.list_deliveries(replace(flt, limit=flt.limit + 1))
    older = rows[flt.limit - 1].id if len(rows) > flt.limit else None
    rows = rows[: flt.limit]
    dead = st.list_deliveries(DeliveryFilter(status=JobState.DEAD, limit=PAGE_DEAD_LETTERS))
    stats = presentation.stats_document(st, now=at)
    by_rule_action: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for row in stats["decisions"]:
        by_rule_action[(row["rule"], row["action"])][row["outcome"]] = row["count"]
    filters = {k: v for k, v in args.items() if k in LIST_PARAMS and k != "before_id"}
    older_args = {**filters, "before_id": older} if older else None
    return _render(
        "admin/index.html",
        deliveries=[presenter().summary(d) for d in rows],
        dead=[presenter().summary(d) for d in dead],
        stats=stats,
        notice=_notice(),
        error=error,
        by_rule_action=sorted(by_rule_action.items()),
        filters=filters,
        older_args=older_args,
        statuses=STATUSES,
        # Agency mode: the configured organizations to choose from (a removed one's rows stay
        # reachable by typing its slug: the filter takes any stored organization).
        organizations=_organization_choices(),
        operations=[presentation.operation(o) for o in st.list_operations(limit=PAGE_OPERATIONS)],
        wallet=wallet_activity.activity_document(st, services().policy, now=at, days=WALLET_DAYS),
    ), 400 if error else 200


def _organization_choices() -> list[str]:
    orgs = services().organizations
    if orgs is None or not orgs.agency:
        return []
    return sorted(o.label for o in orgs)


@page.post("/login")
def login() -> BaseResponse | tuple[str, int]:
    token = request.form.get("token", "").strip()
    try:
        tokens().check(token)
    except TokenError as exc:
        log.info("admin login refused", extra={"request_id": g.get("request_id"), "detail": exc.detail})
        error = f"That token was refused: {exc.detail}."
        return _render("admin/login.html", notice=None, error=error), 401
    resp = redirect(url_for("admin_page.index"), code=303)
    resp.set_cookie(COOKIE, token, path=_cookie_path(), secure=request.is_secure, httponly=True, samesite="Strict")
    log.info("admin login", extra={"request_id": g.get("request_id")})
    return resp


@page.post("/logout")
def logout() -> BaseResponse:
    token = request.cookies.get(COOKIE)
    if token:
        try:
            tokens().check(token)
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
    d = load(delivery_id)
    detail = presenter().detail(d)
    return _render("admin/delivery.html", d=detail, body=presentation.pretty_json(d.body), notice=_notice())


@page.post("/view/deliveries/<int:delivery_id>/replay")
def replay_page(delivery_id: int) -> BaseResponse:
    _check_csrf(_page_login())
    recorded = replay(delivery_id)
    to = url_for("admin_page.delivery_page", delivery_id=recorded.delivery_id, notice="replayed")
    return redirect(to, code=303)


@page.post("/view/dead-letters/<int:job_id>/requeue")
def requeue_page(job_id: int) -> BaseResponse:
    _check_csrf(_page_login())
    try:
        requeue(job_id)
        notice = "requeued"
    except Conflict:
        notice = "not_dead"
    except NotFound:
        notice = "no_dead_letter"
    return redirect(url_for("admin_page.index", notice=notice, job=job_id), code=303)
