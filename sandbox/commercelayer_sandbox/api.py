"""The emulated Commerce Layer API, served by Flask: `create_sandbox_app(sandbox)`.

Routes (route names in brackets are what fault rules, per-endpoint rate limits, the request log
and the stats use):

    POST   /oauth/token                                      [token]
    GET    /api/orders                                       [orders.list]
    GET    /api/orders/{id}                                  [orders.get]
    PATCH  /api/orders/{id}                                  [orders.patch]
    GET    /api/customers/{id}/customer_payment_sources      [customer_payment_sources]
    GET    /api/customer_payment_sources                     [customer_payment_sources]
    GET    /api/customer_payment_sources/{id}                [customer_payment_sources.get]
    GET    /api/webhooks                                     [webhooks.list]
    POST   /api/webhooks                                     [webhooks.create]
    GET    /api/webhooks/{id}                                [webhooks.get]
    PATCH  /api/webhooks/{id}                                [webhooks.patch]
    DELETE /api/webhooks/{id}                                [webhooks.delete]
    GET    /api/webhooks/{id}/last_event_callbacks           [webhooks.last_event_callbacks]

Every request to one of them goes through, in order: the rate limiter (429), injected faults
(latency, hang, drop, 5xx), then for `/api/*` the media types (406 without
`Accept: application/vnd.api+json`, 415 for a body that is not `application/vnd.api+json`) and the
bearer token (401), then the handler. Every answer carries the `x-ratelimit-*` headers, every
request is logged (`/_sandbox/requests`). The control API (`control.py`) is mounted under
`/_sandbox/`.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from commercelayer_sandbox import bodies, control, schema
from commercelayer_sandbox import webhooks as webhook_rules
from commercelayer_sandbox.config import Window
from commercelayer_sandbox.errors import ApiError, not_found
from commercelayer_sandbox.faults import NO_FAULT, FaultDecision
from commercelayer_sandbox.orders import (
    Page,
    apply_patch,
    bad_request,
    order_filters,
    order_sort_key,
    page_count,
    parse_page,
)
from commercelayer_sandbox.render import ORDER_INCLUDES, WALLET_INCLUDES, list_document
from commercelayer_sandbox.sandbox import Sandbox, compact
from commercelayer_sandbox.stats import redact_body, redact_headers
from commercelayer_sandbox.timeutil import iso

API_JSON = "application/vnd.api+json"
DROP_KEY = "commercelayer_sandbox.drop"
_FAULT_CODES = {
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


@dataclass(frozen=True)
class Route:
    name: str
    rule: str
    method: str
    view: Callable[..., Response]

    @property
    def endpoint(self) -> str:
        return "api:" + self.rule + ":" + self.method

    @property
    def rate_class(self) -> str:
        return "auth" if self.name == "token" else "api"


class ConnectionDropper:
    """WSGI middleware: when a handler marked the request as dropped, close the TCP connection
    without writing anything (SO_LINGER 0, so the client sees a reset), and tell werkzeug the
    connection is gone (it treats ConnectionError as a dropped client and stays quiet)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        result = self.app(environ, start_response)
        if not environ.get(DROP_KEY):
            return result
        close = getattr(result, "close", None)
        if close is not None:
            close()
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client is already gone: nothing left to drop
        raise ConnectionAbortedError("sandbox fault: connection dropped")


def jsonapi(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(compact(doc), status, headers=headers, content_type=API_JSON)


def error_response(exc: ApiError) -> Response:
    return jsonapi(exc.document(), exc.status, exc.headers)


def fault_error(status: int) -> ApiError:
    return ApiError(
        status,
        _FAULT_CODES.get(status, "SERVER_ERROR"),
        "Server error",
        f"The server could not complete the request (sandbox fault: {status}).",
        meta={"sandbox_fault": True},
    )


class _Api:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.routes = [
            Route("token", "/oauth/token", "POST", self.token),
            Route("orders.list", "/api/orders", "GET", self.orders_list),
            Route("orders.get", "/api/orders/<order_id>", "GET", self.orders_get),
            Route("orders.patch", "/api/orders/<order_id>", "PATCH", self.orders_patch),
            Route(
                "customer_payment_sources",
                "/api/customers/<customer_id>/customer_payment_sources",
                "GET",
                self.wallet_list,
            ),
            Route(
                "customer_payment_sources", "/api/customer_payment_sources", "GET", self.wallet_list
            ),
            Route(
                "customer_payment_sources.get",
                "/api/customer_payment_sources/<entry_id>",
                "GET",
                self.wallet_get,
            ),
            Route("webhooks.list", "/api/webhooks", "GET", self.webhooks_list),
            Route("webhooks.create", "/api/webhooks", "POST", self.webhooks_create),
            Route("webhooks.get", "/api/webhooks/<webhook_id>", "GET", self.webhooks_get),
            Route("webhooks.patch", "/api/webhooks/<webhook_id>", "PATCH", self.webhooks_patch),
            Route("webhooks.delete", "/api/webhooks/<webhook_id>", "DELETE", self.webhooks_delete),
            Route(
                "webhooks.last_event_callbacks",
                "/api/webhooks/<webhook_id>/last_event_callbacks",
                "GET",
                self.webhooks_callbacks,
            ),
        ]
        self.by_endpoint = {r.endpoint: r for r in self.routes}

    # -- the pipeline --------------------------------------------------------------------

    def before(self) -> Response | None:
        route = self.by_endpoint.get(request.endpoint or "")
        if route is None:
            if request.path.startswith(("/api/", "/oauth/")):
                g.sandbox_route = "unrouted"
                g.sandbox_started = time.monotonic()
            return None
        sandbox, cfg = self.sandbox, self.sandbox.config
        g.sandbox_route = route.name
        g.sandbox_started = time.monotonic()
        windows: list[tuple[tuple[str, ...], Window]]
        if route.rate_class == "auth":
            windows = [(("auth",), w) for w in cfg.auth_limits]
        else:
            windows = [(("api",), w) for w in cfg.api_limits]
            windows += [(("endpoint", route.name), w) for w in cfg.endpoint_limits]
        verdict = sandbox.limiter.hit(windows)
        g.sandbox_ratelimit = verdict
        if verdict is not None and not verdict.allowed:
            kind = verdict.key[0]
            sandbox.stats.count("rate_limited.total")
            sandbox.stats.count(f"rate_limited.{kind}")
            headers = {}
            if cfg.retry_after is not None:
                headers["Retry-After"] = str(
                    max(1, round(cfg.retry_after or verdict.retry_in + 0.5))
                )
            raise ApiError(
                429,
                "TOO_MANY_REQUESTS",
                "Too many requests",
                f"You have exceeded the rate limit of {verdict.limit} requests in "
                f"{verdict.interval:g} seconds.",
                headers=headers,
            )
        decision = sandbox.faults.decide(route.name)
        g.sandbox_fault = decision
        for kind in decision.kinds:
            sandbox.stats.count(f"faults.{kind}")
        if decision.latency and sandbox.stopping.wait(decision.latency):
            return self._drop()
        if decision.hang and sandbox.stopping.wait(decision.hang):
            return self._drop()
        if not decision.apply_then_fail:
            if decision.drop:
                return self._drop()
            if decision.error_status:
                raise fault_error(decision.error_status)
        if route.rate_class == "api":
            self._check_media_types()
            self._check_token()
        return None

    def after(self, response: Response) -> Response:
        route = g.get("sandbox_route")
        if route is None:
            return response
        decision: FaultDecision = g.get("sandbox_fault", NO_FAULT)
        if (
            decision.apply_then_fail
            and response.status_code < 400
            and not request.environ.get(DROP_KEY)
        ):
            if decision.drop:
                request.environ[DROP_KEY] = True
            elif decision.error_status:
                response = error_response(fault_error(decision.error_status))
        verdict = g.get("sandbox_ratelimit")
        if verdict is not None:
            response.headers.update(verdict.headers())
        dropped = bool(request.environ.get(DROP_KEY))
        self.sandbox.stats.record_request(
            {
                "time": iso(self.sandbox.now_ms()),
                "method": request.method,
                "path": request.path,
                "query": request.query_string.decode("latin-1"),
                "route": route,
                "headers": redact_headers(request.headers.items()),
                "body": redact_body(self._logged_body()),
                "status": None if dropped else response.status_code,
                "faults": decision.kinds,
                "duration_ms": round((time.monotonic() - g.sandbox_started) * 1000, 3),
            }
        )
        return response

    def _logged_body(self) -> Any:
        raw = request.get_data(cache=True)
        if not raw:
            return None
        if request.mimetype == "application/x-www-form-urlencoded":
            return request.form.to_dict()
        try:
            return json.loads(raw)
        except ValueError:
            return raw[:2000].decode("utf-8", "replace")

    def _drop(self) -> Response:
        request.environ[DROP_KEY] = True
        return Response(b"", 500)

    def _check_media_types(self) -> None:
        accepted = [
            part.split(";")[0].strip().lower()
            for part in request.headers.get("Accept", "").split(",")
        ]
        if API_JSON not in accepted:
            raise ApiError(
                406,
                "NOT_ACCEPTABLE",
                "Not acceptable",
                f"All requests must use the '{API_JSON}' Accept header.",
            )
        has_body = (request.content_length or 0) > 0 or "chunked" in request.headers.get(
            "Transfer-Encoding", ""
        ).lower()
        if has_body and request.mimetype != API_JSON:
            raise ApiError(
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                "Unsupported media type",
                f"All requests that create or update must use the '{API_JSON}' "
                "Content-Type header.",
            )

    def _check_token(self) -> None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise ApiError(
                401,
                "INVALID_TOKEN",
                "Invalid token",
                "The access token is missing: send Authorization: Bearer <token>.",
            )
        state = self.sandbox.state
        if state.valid_token(value, now=self.sandbox.now()) is None:
            expired = value in state.tokens
            raise ApiError(
                401,
                "INVALID_TOKEN",
                "Token expired" if expired else "Invalid token",
                "The access token you provided has expired."
                if expired
                else "The access token you provided is invalid.",
            )

    # -- helpers ---------------------------------------------------------------------------

    @property
    def _base(self) -> str:
        return request.host_url.rstrip("/")

    def _renderer(self) -> Any:
        return self.sandbox.renderer(self._base)

    @staticmethod
    def _include(allowed: Iterable[str]) -> list[str]:
        raw = request.args.get("include")
        if raw is None:
            return []
        names = [n.strip() for n in raw.split(",") if n.strip()]
        allowed = tuple(allowed)
        for name in names:
            if name not in allowed:
                raise bad_request(
                    "INVALID_INCLUDE",
                    "Invalid include",
                    f"{name} is not a valid relationship of this resource "
                    f"(the sandbox includes {', '.join(allowed)}).",
                    parameter="include",
                )
        return list(dict.fromkeys(names))

    @staticmethod
    def _json_body() -> Any:
        raw = request.get_data(cache=True)
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(
                400, "BAD_REQUEST", "Bad request", "The request body is not valid JSON."
            ) from None

    def _page(self) -> Page:
        cfg = self.sandbox.config
        return parse_page(
            request.args, default_size=cfg.page_size_default, max_size=cfg.page_size_max
        )

    def _links(self, page: Page, pages: int) -> dict[str, str]:
        others = [(k, v) for k, v in request.args.items(multi=True) if not k.startswith("page[")]

        def url(number: int) -> str:
            query = [("page[number]", str(number)), ("page[size]", str(page.size)), *others]
            return f"{request.base_url}?{urlencode(query)}"

        links = {"first": url(1)}
        if page.number > 1:
            links["prev"] = url(min(page.number - 1, max(pages, 1)))
        if page.number < pages:
            links["next"] = url(page.number + 1)
        links["last"] = url(max(pages, 1))
        return links

    def _listing(
        self,
        items: list[Any],
        render: Callable[[Any], dict[str, Any]],
        included: Callable[[list[Any]], list[dict[str, Any]]] | None = None,
    ) -> Response:
        page = self._page()
        pages = page_count(len(items), page.size)
        chosen = items[(page.number - 1) * page.size : page.number * page.size]
        data = [render(item) for item in chosen]
        doc = list_document(
            data,
            record_count=len(items),
            page_count=pages,
            links=self._links(page, pages),
            included=included(chosen) if included else None,
        )
        return jsonapi(doc)

    def _check_order_document(
        self, doc: dict[str, Any], *, relaxed: bool, listing: bool = False
    ) -> None:
        if not self.sandbox.config.check_responses:
            return
        problems = schema.errors(
            "orderResponseList" if listing else "orderResponse", doc, relaxed=relaxed
        )
        if problems:
            raise ApiError(
                500,
                "SANDBOX_SCHEMA_MISMATCH",
                "Sandbox bug",
                "; ".join(f"{p}: {m}" for p, m in problems[:10]),
            )

    # -- OAuth -----------------------------------------------------------------------------

    def token(self) -> Response:
        sandbox = self.sandbox
        if request.mimetype in ("application/json", API_JSON):
            body = self._json_body()
            if not isinstance(body, dict):
                raise ApiError(400, "BAD_REQUEST", "Bad request", "The body must be a JSON object.")
        else:
            body = request.form.to_dict()
        if body.get("grant_type") != "client_credentials":
            raise ApiError(
                400,
                "UNSUPPORTED_GRANT_TYPE",
                "Unsupported grant type",
                "The sandbox issues client_credentials tokens only.",
                pointer="/grant_type",
            )
        client = sandbox.state.check_client(
            str(body.get("client_id", "")), str(body.get("client_secret", ""))
        )
        if client is None:
            raise ApiError(
                401,
                "INVALID_CLIENT",
                "Invalid client",
                "Client authentication failed due to unknown client or wrong secret.",
            )
        now = sandbox.now()
        ttl = sandbox.config.token_ttl
        scope = str(body.get("scope") or client.scope)
        token = sandbox.state.issue_token(client, scope, now=now, ttl=ttl)
        sandbox.stats.count("tokens.issued")
        answer = {
            "access_token": token.value,
            "token_type": "bearer",
            "expires_in": int(ttl),
            "scope": scope,
            "created_at": int(now),
        }
        return Response(json.dumps(answer), 200, content_type="application/json")

    # -- orders ------------------------------------------------------------------------------

    def orders_get(self, order_id: str) -> Response:
        include = self._include(ORDER_INCLUDES)
        with self.sandbox.state.lock:
            doc = self._renderer().order_document(self.sandbox.state.order(order_id), include)
        self._check_order_document(doc, relaxed=bool(include))
        return jsonapi(doc)

    def orders_patch(self, order_id: str) -> Response:
        sandbox, state, stats = self.sandbox, self.sandbox.state, self.sandbox.stats
        doc = self._json_body()
        attrs = (doc.get("data") or {}).get("attributes") if isinstance(doc, dict) else None
        if isinstance(attrs, dict):
            if attrs.get("_save_payment_source_to_customer_wallet") is True:
                stats.count("wallet.save_flags")
            if "_customer_payment_source_id" in attrs:
                stats.count("wallet.use_flags")
        state.order(order_id)
        include = self._include(ORDER_INCLUDES)
        attributes = bodies.check_document("orderUpdate", doc, url_id=order_id)
        for name in bodies.relationships_of(doc):
            raise ApiError(
                422,
                "VALIDATION_ERROR",
                "not modelled by the sandbox",
                f"the sandbox does not model changing an order's {name} relationship",
                pointer=f"/data/relationships/{name}",
                meta={"error": "not_modelled"},
            )
        try:
            outcome = apply_patch(state, order_id, attributes, now=sandbox.now_ms())
        except ApiError as exc:
            pointer = exc.errors[0]["source"].get("pointer", "")
            if pointer.endswith("/_save_payment_source_to_customer_wallet"):
                stats.count("wallet.save_refused")
            elif pointer.endswith("/_customer_payment_source_id"):
                stats.count("wallet.use_refused")
            raise
        stats.count("wallet.entries_created", len(outcome.created))
        stats.count("wallet.duplicates", outcome.duplicates)
        if outcome.used_entry is not None:
            stats.count("wallet.use_applied")
        with state.lock:
            for topic in outcome.topics:
                sandbox.fire(topic, state.order(order_id))
            doc = self._renderer().order_document(state.order(order_id), include)
        self._check_order_document(doc, relaxed=bool(include))
        return jsonapi(doc)

    def orders_list(self) -> Response:
        state = self.sandbox.state
        filters = order_filters(request.args)
        key = order_sort_key(request.args.get("sort"))
        include = self._include(ORDER_INCLUDES)
        self._page()  # refuse bad page parameters before anything else
        with state.lock:
            orders = sorted(
                (o for o in state.orders.values() if all(f(o) for f in filters)), key=key
            )
            renderer = self._renderer()
            docs: dict[str, dict[str, Any]] = {}

            def render(o: Any) -> dict[str, Any]:
                docs[o.id] = renderer.order_document(o, include)
                return docs[o.id]["data"]

            def included(chosen: list[Any]) -> list[dict[str, Any]]:
                seen: dict[tuple[str, str], dict[str, Any]] = {}
                for o in chosen:
                    for r in docs[o.id].get("included", []):
                        seen.setdefault((r["type"], r["id"]), r)
                return list(seen.values())

            response = self._listing(orders, render, included)
        if self.sandbox.config.check_responses:
            self._check_order_document(
                json.loads(response.get_data()), relaxed=bool(include), listing=True
            )
        return response

    # -- wallets -----------------------------------------------------------------------------

    def wallet_list(self, customer_id: str | None = None) -> Response:
        state = self.sandbox.state
        for key in request.args:
            if key.startswith("filter") and key != "filter[q][customer_id_eq]":
                raise bad_request(
                    "FILTER_NOT_ALLOWED",
                    "Filter not allowed",
                    f"{key} is not a filter the sandbox supports here (filter[q][customer_id_eq]).",
                    parameter=key,
                )
        include = self._include(WALLET_INCLUDES)
        with state.lock:
            if customer_id is not None:
                state.customer(customer_id)
            wanted = customer_id or request.args.get("filter[q][customer_id_eq]")
            entries = sorted(
                (w for w in state.wallet.values() if wanted is None or w.customer_id == wanted),
                key=lambda w: (w.created_at, w.id),
            )
            renderer = self._renderer()
            return self._listing(
                entries,
                renderer.wallet_entry,
                lambda chosen: renderer.wallet_included(chosen, include),
            )

    def wallet_get(self, entry_id: str) -> Response:
        state = self.sandbox.state
        include = self._include(WALLET_INCLUDES)
        with state.lock:
            entry = state.wallet.get(entry_id)
            if entry is None:
                raise not_found("customer_payment_sources", entry_id)
            renderer = self._renderer()
            doc: dict[str, Any] = {"data": renderer.wallet_entry(entry)}
            extra = renderer.wallet_included([entry], include)
            if extra:
                doc["included"] = extra
        return jsonapi(doc)

    # -- webhooks ----------------------------------------------------------------------------

    def webhooks_list(self) -> Response:
        state = self.sandbox.state
        with state.lock:
            hooks = sorted(state.webhooks.values(), key=lambda w: (w.created_at, w.id))
            return self._listing(hooks, self._renderer().webhook)

    def webhooks_create(self) -> Response:
        attrs = bodies.check_document("webhookCreate", self._json_body())
        hook = webhook_rules.create(self.sandbox.state, attrs, now=self.sandbox.now_ms())
        with self.sandbox.state.lock:
            return jsonapi({"data": self._renderer().webhook(hook)}, 201)

    def webhooks_get(self, webhook_id: str) -> Response:
        with self.sandbox.state.lock:
            return jsonapi(
                {"data": self._renderer().webhook(self.sandbox.state.webhook(webhook_id))}
            )

    def webhooks_patch(self, webhook_id: str) -> Response:
        state = self.sandbox.state
        state.webhook(webhook_id)
        attrs = bodies.check_document("webhookUpdate", self._json_body(), url_id=webhook_id)
        with state.lock:
            hook = webhook_rules.update(
                state, state.webhook(webhook_id), attrs, now=self.sandbox.now_ms()
            )
            return jsonapi({"data": self._renderer().webhook(hook)})

    def webhooks_delete(self, webhook_id: str) -> Response:
        state = self.sandbox.state
        with state.lock:
            state.webhook(webhook_id)
            del state.webhooks[webhook_id]
        return Response(status=204)

    def webhooks_callbacks(self, webhook_id: str) -> Response:
        state = self.sandbox.state
        with state.lock:
            state.webhook(webhook_id)
            return self._listing(state.callbacks_for(webhook_id), self._renderer().event_callback)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status == 404:
        err = ApiError(
            404,
            "RECORD_NOT_FOUND",
            "Record not found",
            f"{request.path} is not a route of the sandbox.",
        )
    else:
        title = exc.name or "Error"
        err = ApiError(status, title.upper().replace(" ", "_"), title, exc.description or title)
    response = error_response(err)
    if status == 405 and exc.get_headers():
        allow = dict(exc.get_headers()).get("Allow")
        if allow:
            response.headers["Allow"] = allow
    return response


def create_sandbox_app(sandbox: Sandbox) -> Flask:
    """The Flask application serving `sandbox`'s API and control routes."""
    app = Flask("commercelayer_sandbox")
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["sandbox"] = sandbox
    api = _Api(sandbox)
    for route in api.routes:
        app.add_url_rule(
            route.rule, endpoint=route.endpoint, view_func=route.view, methods=[route.method]
        )
    app.before_request(api.before)
    app.after_request(api.after)
    app.register_error_handler(ApiError, error_response)
    app.register_error_handler(HTTPException, _http_error)
    control.init_app(app, sandbox)
    app.wsgi_app = ConnectionDropper(app.wsgi_app)  # type: ignore[method-assign]
    return app
