"""The admin JSON API, authenticated by `Authorization: Bearer <admin token>` and nothing else
(so it needs no CSRF defence): `GET /admin/deliveries`, `GET /admin/deliveries/<id>`,
`POST /admin/deliveries/<id>/replay`, `POST /admin/dead-letters/<job id>/requeue`,
`GET /admin/stats`, `GET /admin/operations` (the operations log), `GET /admin/wallet-activity`.
Also the admin actions the page shares (load, replay, requeue).

With no admin keys configured every admin route answers 404 saying so. Nothing here returns a
secret: stored headers that could carry a credential are dropped again on the way out, and error
texts are scrubbed of the configured keys and secrets (`presentation.Presenter`).
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import replace

from flask import Blueprint, Flask, Response, g, jsonify, request

from webhook_app import wallet_activity
from webhook_app.errors import Conflict, NotFound
from webhook_app.logs import settings_secrets
from webhook_app.states import DeliveryStatus, JobState
from webhook_app.store import Recorded, Store, StoredDelivery
from webhook_app.tokens import ADMIN, TokenError, Tokens
from webhook_app.web import presentation
from webhook_app.web.context import services
from webhook_app.web.presentation import MAX_ID, InvalidQuery, Presenter, delivery_filter, stats_document

log = logging.getLogger(__name__)

api = Blueprint("admin_api", __name__, url_prefix="/admin")


class AdminDisabled(NotFound):
    """No admin keys are configured, so there is no admin API or page."""


def init_app(app: Flask) -> None:
    app.register_blueprint(api)


def store() -> Store:
    return services().store


def presenter() -> Presenter:
    s = services()
    secrets = settings_secrets(s.settings)
    for org in s.organizations or ():  # agency mode: every organization's secrets are scrubbed too
        secrets += [w.secret.decode("utf-8", "replace") for w in org.secrets]
        secrets += [org.client_secret] if org.client_secret else []
    return Presenter(secrets)


def tokens() -> Tokens:
    s = services()
    return Tokens(ADMIN, s.settings.admin_keys, s.clock)


def now() -> float:
    return services().clock()


def require_enabled() -> None:
    if not services().settings.admin_keys:
        raise AdminDisabled("the admin API and page are disabled: set WEBHOOK_APP_ADMIN_KEYS to enable them")


def _check_id(value: int, what: str) -> int:
    if value > MAX_ID:
        raise NotFound(f"no {what} {value}")
    return value


@api.before_request
def _api_auth() -> None:
    require_enabled()
    header = request.headers.get("Authorization")
    if header is None:
        raise TokenError(
            "missing admin token: send `Authorization: Bearer <token>` (make one with `webhook-app admin-token`)"
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("the Authorization header must be `Bearer <admin token>`")
    tokens().check(token.strip())


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
    rows = store().list_deliveries(replace(flt, limit=flt.limit + 1))
    more = len(rows) > flt.limit
    rows = rows[: flt.limit]
    return jsonify(
        {"deliveries": [presenter().summary(d) for d in rows], "next_before_id": rows[-1].id if more and rows else None}
    ), 200


@api.get("/deliveries/<int:delivery_id>")
def get_delivery(delivery_id: int) -> tuple[Response, int]:
    return jsonify(presenter().detail(load(delivery_id))), 200


@api.post("/deliveries/<int:delivery_id>/replay")
def replay_delivery(delivery_id: int) -> tuple[Response, int]:
    recorded = replay(delivery_id)
    return jsonify(
        {
            "status": "accepted" if recorded.status == DeliveryStatus.QUEUED else recorded.status,
            "delivery_id": recorded.delivery_id,
            "job_id": recorded.job_id,
            "replay_of": _store_replay_root(recorded.delivery_id),
        }
    ), 202


@api.post("/dead-letters/<int:job_id>/requeue")
def requeue_dead_letter(job_id: int) -> tuple[Response, int]:
    requeue(job_id)
    return jsonify({"status": "requeued", "job_id": job_id, "state": JobState.PENDING}), 202


@api.get("/operations")
def list_operations() -> tuple[Response, int]:
    """The operations log, newest first: `?kind=` one kind, `?limit=` (1-500), `?before_id=`."""
    args = request.args
    unknown = sorted(set(args) - {"kind", "limit", "before_id"})
    if unknown:
        raise InvalidQuery(f"unknown query parameter {unknown[0][:40]!r}; allowed: kind, limit, before_id")
    kind = args.get("kind") or None
    if kind is not None and not re.fullmatch(r"[a-z_]{1,40}", kind):
        raise InvalidQuery("kind must be a name like wallet_entry_deleted")
    limit = _int_arg("limit", args.get("limit"), default=100, high=500) or 100
    before = _int_arg("before_id", args.get("before_id"), default=None, high=MAX_ID)
    ops = store().list_operations(kind=kind, limit=limit, before_id=before)
    return jsonify({"operations": [presentation.operation(o) for o in ops]}), 200


def _int_arg(name: str, raw: str | None, *, default: int | None, high: int) -> int | None:
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"\d{1,19}", raw) or not 1 <= int(raw) <= high:
        raise InvalidQuery(f"{name} must be a whole number from 1 to {high}")
    return int(raw)


@api.get("/wallet-activity")
def get_wallet_activity() -> tuple[Response, int]:
    """Wallet activity per UTC day and market: `?days=` (1-366, default 14), newest first."""
    args = request.args
    unknown = sorted(set(args) - {"days"})
    if unknown:
        raise InvalidQuery(f"unknown query parameter {unknown[0][:40]!r}; allowed: days")
    days = _int_arg("days", args.get("days"), default=14, high=wallet_activity.MAX_DAYS) or 14
    return jsonify(wallet_activity.activity_document(store(), services().policy, now=now(), days=days)), 200


@api.get("/stats")
def stats() -> tuple[Response, int]:
    return jsonify(stats_document(store(), now=now())), 200


def load(delivery_id: int) -> StoredDelivery:
    found = store().get_delivery(_check_id(delivery_id, "delivery"))
    if found is None:
        raise NotFound(f"no delivery {delivery_id}")
    return found


def replay(delivery_id: int) -> Recorded:
    delivery_id = _check_id(delivery_id, "delivery")
    recorded = store().record_replay(delivery_id, nonce=secrets.token_hex(8), now=now())
    if recorded is None:
        raise NotFound(f"no delivery {delivery_id}")
    log.info(
        "admin replay",
        extra={
            "request_id": g.get("request_id"),
            "delivery_id": delivery_id,
            "new_delivery_id": recorded.delivery_id,
            "job_id": recorded.job_id,
        },
    )
    return recorded


def _store_replay_root(delivery_id: int) -> int | None:
    d = store().get_delivery(delivery_id)
    return None if d is None else d.replay_of


def requeue(job_id: int) -> None:
    st = store()
    if st.requeue(_check_id(job_id, "dead letter with job id"), now=now()):
        log.info("admin requeue", extra={"request_id": g.get("request_id"), "job_id": job_id})
        return
    state = st.job_state(job_id)
    if state is None:
        raise NotFound(f"no dead letter with job id {job_id}")
    raise Conflict(f"job {job_id} is {state}, not dead: only dead letters can be requeued")
