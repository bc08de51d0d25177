"""The emulated Commerce Layer API, served by Flask: `create_sandbox_app(sandbox)`.

Routes (route names in brackets are what fault rules, per-endpoint rate limits, the request log
and the stats use):

    POST   /oauth/token                                      [token]
    GET    /api/orders                                       [orders.list]
    GET    /api/orders/{id}                                  [orders.get]
    PATCH  /api/orders/{id}                                  [orders.patch]
    PATCH  /api/customers/{id}                               [customers.patch] (anonymization triggers only)
    GET    /api/customer_payment_sources                     [customer_payment_sources]
    DELETE /api/customer_payment_sources/{id}                [customer_payment_sources.delete]
    GET    /api/events                                       [events.list]
    PATCH  /api/events/{id}                                  [events.patch]
    GET    /api/webhooks                                     [webhooks.list]
    POST   /api/webhooks                                     [webhooks.create]
    GET    /api/webhooks/{id}                                [webhooks.get]
    PATCH  /api/webhooks/{id}                                [webhooks.patch]
    DELETE /api/webhooks/{id}                                [webhooks.delete]
    GET    /api/{type}/{id}                                  [{type}.get]
    GET    /api/{type}/{id}/{relationship}                   [{type}.{relationship}]
    GET    /api/{type}/{id}/relationships/{relationship}     [{type}.relationships.{relationship}]

`{type}` is any type the sandbox models (`render.TYPES`: customers, markets, line_items, skus,
customer_payment_sources, payment_methods, events, event_callbacks, the payment source types), so every
link it renders resolves: e.g. `/api/orders/{id}/available_customer_payment_sources` (a list,
paginated like `/api/orders`), `/api/orders/{id}/customer`, `/api/customers/{id}` and
`/api/customers/{id}/customer_payment_sources` (route name `customer_payment_sources`).
A relationship the sandbox does not model (addresses, shipments...) answers null or an empty
list. `include`, `fields[TYPE]` and the links follow `render.py`; links follow
`X-Forwarded-Proto`/`X-Forwarded-Host` (a TLS proxy in front). Tokens are JWTs (`tokens.py`).

Every request to one of them goes through the pipeline of `pipeline.py` (rate limit, injected
faults, media types, token; the request log). The control API (`control.py`) is mounted under
`/_sandbox/`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from commercelayer_sandbox import anonymization, bodies, control, schema
from commercelayer_sandbox import events as event_rules
from commercelayer_sandbox import webhooks as webhook_rules
from commercelayer_sandbox.answers import API_JSON, error_response, jsonapi
from commercelayer_sandbox.errors import ApiError, SandboxError, invalid, not_found
from commercelayer_sandbox.orders import (
    Page,
    apply_patch,
    bad_request,
    order_filters,
    order_sort_key,
    page_count,
    parse_page,
)
from commercelayer_sandbox.pipeline import ConnectionDropper, Pipeline, Route
from commercelayer_sandbox.render import (
    TYPES,
    IncludeTree,
    Ref,
    Renderer,
    parse_fields,
    parse_include,
)
from commercelayer_sandbox.sandbox import Sandbox


class _Views:
    """What the views share: rendering, includes, bodies, pages and listings, response checks."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    @property
    def _base(self) -> str:
        # with the organization's path prefix (`/_org/<slug>`) when it came through one
        return request.url_root.rstrip("/")

    def _renderer(self) -> Renderer:
        """This answer's renderer: public links, a trace id, the request's sparse fieldsets."""
        return self.sandbox.renderer(self._base, trace_id=g.get("trace_id"), fields=parse_fields(request.args))

    @staticmethod
    def _include(rtype: str) -> IncludeTree:
        return parse_include(request.args.get("include"), rtype)

    @staticmethod
    def _json_body() -> Any:
        raw = request.get_data(cache=True)
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "BAD_REQUEST", "Bad request", "The request body is not valid JSON.") from None

    def _page(self) -> Page:
        cfg = self.sandbox.config
        return parse_page(request.args, default_size=cfg.page_size_default, max_size=cfg.page_size_max)

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

    def _listing(self, refs: list[Ref], tree: IncludeTree) -> Response:
        page = self._page()
        pages = page_count(len(refs), page.size)
        chosen = refs[(page.number - 1) * page.size : page.number * page.size]
        doc = self._renderer().list_document(
            chosen,
            tree,
            record_count=len(refs),
            page_count=pages,
            links=self._links(page, pages),
        )
        return jsonapi(doc)

    def _check_order_document(self, doc: dict[str, Any], *, relaxed: bool, listing: bool = False) -> None:
        if not self.sandbox.config.check_responses or any(k.startswith("fields") for k in request.args):
            return
        problems = schema.errors("orderResponseList" if listing else "orderResponse", doc, relaxed=relaxed)
        if problems:
            raise ApiError(
                500,
                "SANDBOX_SCHEMA_MISMATCH",
                "Sandbox bug",
                "; ".join(f"{p}: {m}" for p, m in problems[:10]),
            )


class _OrderViews(_Views):
    """OAuth tokens, orders (with the wallet and status triggers), customers, wallets."""

    def token(self) -> Response:
        """`POST /oauth/token`; a refusal in the configured `auth_error_shape` (undocumented)."""
        try:
            return self._token()
        except ApiError as exc:
            if self.sandbox.config.auth_error_shape != "oauth":
                raise
            err = exc.errors[0]
            answer = {"error": str(err["code"]).lower(), "error_description": err["detail"]}
            return Response(json.dumps(answer), exc.status, content_type="application/json")

    def _token(self) -> Response:
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
        client = sandbox.state.check_client(str(body.get("client_id", "")), str(body.get("client_secret", "")))
        if client is None:
            raise ApiError(
                401,
                "INVALID_CLIENT",
                "Invalid client",
                "Client authentication failed due to unknown client or wrong secret.",
            )
        scope = str(body.get("scope") or client.scope)
        token = sandbox.issue_token(client, scope)
        sandbox.stats.count("tokens.issued")
        answer = {
            "access_token": token.value,
            "token_type": "bearer",
            "expires_in": int(sandbox.config.token_ttl),
            "scope": scope,
            "created_at": int(token.created_at),
        }
        return Response(json.dumps(answer), 200, content_type="application/json")

    # -- orders ------------------------------------------------------------------------------

    def orders_get(self, order_id: str) -> Response:
        include = self._include("orders")
        renderer = self._renderer()
        with self.sandbox.state.lock:
            doc = renderer.document("orders", self.sandbox.state.order(order_id), include)
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
        include = self._include("orders")
        renderer = self._renderer()
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
            outcome = apply_patch(
                state,
                order_id,
                attributes,
                now=sandbox.now_ms(),
                gateway_refusal=sandbox.config.wallet_save_refusal,
                expired_card=sandbox.config.expired_card_refusal,
            )
        except ApiError as exc:
            pointer = exc.errors[0]["source"].get("pointer", "")
            if pointer.endswith("/_save_payment_source_to_customer_wallet"):
                stats.count("wallet.save_refused")
            elif pointer.endswith("/_customer_payment_source_id"):
                stats.count("wallet.use_refused")
            if exc.errors[0].get("meta", {}).get("error") == "card_expired":
                stats.count("wallet.expired_card_refused")
            raise
        stats.count("wallet.entries_created", len(outcome.created))
        if outcome.refused_without_entry:
            stats.count("wallet.save_refused_without_entry")
        stats.count("wallet.duplicates", outcome.duplicates)
        if outcome.used_entry is not None:
            stats.count("wallet.use_applied")
        with state.lock:
            for topic in outcome.topics:
                sandbox.fire(topic, state.order(order_id))
            doc = renderer.document("orders", state.order(order_id), include)
        self._check_order_document(doc, relaxed=bool(include))
        return jsonapi(doc)

    def customers_patch(self, customer_id: str) -> Response:
        """`_request_anonymization` / `_cancel_anonymization` (the only customer changes the
        sandbox models); refused for a sales channel's token, as Commerce Layer documents."""
        sandbox, state = self.sandbox, self.sandbox.state
        doc = self._json_body()
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, dict) or data.get("type") != "customers" or data.get("id") != customer_id:
            raise ApiError(
                400, "BAD_REQUEST", "Bad request", "the body must be {data: {type: customers, id: ID, attributes}}"
            )
        attrs = data.get("attributes") or {}
        triggers = ("_request_anonymization", "_cancel_anonymization")
        problems = [
            invalid(f"the sandbox models only {' and '.join(triggers)} on customers", pointer=f"/data/attributes/{k}")
            for k in (attrs if isinstance(attrs, dict) else {})
            if k not in triggers
        ]
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = state.valid_token(value.strip(), now=sandbox.now())
        kind = ((token.claims.get("application") or {}).get("kind") if token else None) or ""
        if kind == "sales_channel":
            problems += [invalid("cannot be passed by sales channels", pointer=f"/data/attributes/{k}") for k in attrs]
        if problems:
            raise ApiError.many(422, problems)
        with state.lock:
            customer = state.customer(customer_id)
            try:
                if attrs.get("_request_anonymization") is True:
                    anonymization.request(customer, sandbox.now_ms())
                if attrs.get("_cancel_anonymization") is True:
                    topic = "customers.anonymization_cancelled"
                    anonymization.transition(state, customer, topic, sandbox.now_ms())
                    sandbox.fire_customer(topic, customer)
            except SandboxError as exc:
                name = next(k for k in triggers if attrs.get(k) is True)
                raise ApiError.many(422, [invalid(exc.message, pointer=f"/data/attributes/{name}")]) from None
            return jsonapi(self._renderer().document("customers", customer, self._include("customers")))

    def orders_list(self) -> Response:
        state = self.sandbox.state
        filters = order_filters(request.args)
        key = order_sort_key(request.args.get("sort"))
        include = self._include("orders")
        self._page()  # refuse bad page parameters before anything else
        with state.lock:
            orders = sorted((o for o in state.orders.values() if all(f(o) for f in filters)), key=key)
            response = self._listing([("orders", o) for o in orders], include)
        if self.sandbox.config.check_responses:
            self._check_order_document(json.loads(response.get_data()), relaxed=bool(include), listing=True)
        return response

    # -- wallets -----------------------------------------------------------------------------

    def wallet_list(self) -> Response:
        state = self.sandbox.state
        for key in request.args:
            if key.startswith("filter") and key != "filter[q][customer_id_eq]":
                raise bad_request(
                    "FILTER_NOT_ALLOWED",
                    "Filter not allowed",
                    f"{key} is not a filter the sandbox supports here (filter[q][customer_id_eq]).",
                    parameter=key,
                )
        include = self._include("customer_payment_sources")
        with state.lock:
            wanted = request.args.get("filter[q][customer_id_eq]")
            entries = sorted(
                (w for w in state.wallet.values() if wanted is None or w.customer_id == wanted),
                key=lambda w: (w.created_at, w.id),
            )
            return self._listing([("customer_payment_sources", w) for w in entries], include)

    def wallet_delete(self, entry_id: str) -> Response:
        state = self.sandbox.state
        with state.lock:
            if entry_id not in state.wallet:
                raise not_found("customer_payment_sources", entry_id)
            del state.wallet[entry_id]
        self.sandbox.stats.count("wallet.entries_deleted")
        return Response(status=204)


class _ResourceViews(_Views):
    """Any modelled resource and its relationships, events, webhooks."""

    def _record(self, rtype: str, rid: str) -> Any:
        spec = TYPES.get(rtype)
        if spec is None:
            raise ApiError(
                404,
                "RECORD_NOT_FOUND",
                "Record not found",
                f"/api/{rtype} is not a resource the sandbox models.",
            )
        record = spec.find(self.sandbox.state, rid)
        if record is None:
            raise not_found(rtype, rid)
        return record

    def _relationship(self, rtype: str, rid: str, rel: str) -> tuple[Any, Any]:
        record = self._record(rtype, rid)
        if rel not in TYPES[rtype].rels:
            raise ApiError(
                404,
                "RECORD_NOT_FOUND",
                "Record not found",
                f"{rel} is not a relationship of {rtype}.",
            )
        return record, TYPES[rtype].rels[rel]

    def resource_get(self, rtype: str, rid: str) -> Response:
        include = self._include(rtype) if rtype in TYPES else {}
        renderer = self._renderer()
        with self.sandbox.state.lock:
            record = self._record(rtype, rid)
            return jsonapi(renderer.document(rtype, record, include))

    def related_get(self, rtype: str, rid: str, rel: str) -> Response:
        """`GET /api/TYPE/ID/REL`: the related resource (or a paginated list of them).

        A relationship the sandbox does not model answers null or an empty list."""
        state = self.sandbox.state
        with state.lock:
            record, spec = self._relationship(rtype, rid, rel)
            renderer = self._renderer()
            target = renderer.resolve(rtype, record, rel)
            if spec.many:
                refs: list[Ref] = list(target)
                target_type = refs[0][0] if refs else None
                include = self._include(target_type) if target_type else {}
                if not refs and request.args.get("include"):
                    include = {}
                return self._listing(refs, include)
            if target is None:
                return jsonapi({"data": None, "meta": dict(renderer.meta)})
            include = self._include(target[0])
            return jsonapi(renderer.document(target[0], target[1], include))

    def relationship_get(self, rtype: str, rid: str, rel: str) -> Response:
        """`GET /api/TYPE/ID/relationships/REL`: the linkage alone."""
        state = self.sandbox.state
        with state.lock:
            record, _ = self._relationship(rtype, rid, rel)
            renderer = self._renderer()
            target = renderer.resolve(rtype, record, rel)
            if isinstance(target, list):
                data: Any = [{"type": t, "id": r.id} for t, r in target]
            else:
                data = None if target is None else {"type": target[0], "id": target[1].id}
            links = renderer.rel_links(rtype, rid, rel)
            return jsonapi({"data": data, "links": links, "meta": dict(renderer.meta)})

    # -- events --------------------------------------------------------------------------------

    def events_list(self) -> Response:
        """`GET /api/events`, oldest first; `filter[q][name_eq]` (the topic) is the one filter."""
        state = self.sandbox.state
        for key in request.args:
            if key.startswith("filter") and key != "filter[q][name_eq]":
                raise bad_request(
                    "FILTER_NOT_ALLOWED",
                    "Filter not allowed",
                    f"{key} is not a filter the sandbox supports here (filter[q][name_eq]).",
                    parameter=key,
                )
        include = self._include("events")
        wanted = request.args.get("filter[q][name_eq]")
        with state.lock:
            found = sorted(
                (e for e in state.events.values() if wanted is None or e.topic == wanted),
                key=lambda e: (e.created_at, e.id),
            )
            return self._listing([("events", e) for e in found], include)

    def events_patch(self, event_id: str) -> Response:
        """`PATCH /api/events/{id}`: `_trigger: true` sends the event again (`events.py`)."""
        sandbox, state = self.sandbox, self.sandbox.state
        with state.lock:
            if event_id not in state.events:
                raise not_found("events", event_id)
        attributes = event_rules.check_update(self._json_body(), url_id=event_id)
        if attributes.get("_trigger") is True:
            application = (g.get("token_claims") or {}).get("application") or {}
            if application.get("kind") == "sales_channel":
                raise event_rules.sales_channel_refused()
            sandbox.trigger_event(event_id)
        with state.lock:
            event = state.events[event_id]
            for name in ("reference", "reference_origin", "metadata"):
                if name in attributes:
                    setattr(event, name, attributes[name])
            if set(attributes) - {"_trigger"}:
                event.updated_at = sandbox.now_ms()
            return jsonapi(self._renderer().document("events", event, self._include("events")))

    # -- webhooks ----------------------------------------------------------------------------

    def webhooks_list(self) -> Response:
        state = self.sandbox.state
        with state.lock:
            hooks = sorted(state.webhooks.values(), key=lambda w: (w.created_at, w.id))
            return self._listing([("webhooks", h) for h in hooks], self._include("webhooks"))

    def webhooks_create(self) -> Response:
        attrs = bodies.check_document("webhookCreate", self._json_body())
        hook = webhook_rules.create(self.sandbox.state, attrs, now=self.sandbox.now_ms())
        with self.sandbox.state.lock:
            return jsonapi(self._renderer().document("webhooks", hook), 201)

    def webhooks_get(self, webhook_id: str) -> Response:
        with self.sandbox.state.lock:
            hook = self.sandbox.state.webhook(webhook_id)
            return jsonapi(self._renderer().document("webhooks", hook, self._include("webhooks")))

    def webhooks_patch(self, webhook_id: str) -> Response:
        state = self.sandbox.state
        state.webhook(webhook_id)
        attrs = bodies.check_document("webhookUpdate", self._json_body(), url_id=webhook_id)
        with state.lock:
            hook = webhook_rules.update(state, state.webhook(webhook_id), attrs, now=self.sandbox.now_ms())
            return jsonapi(self._renderer().document("webhooks", hook))

    def webhooks_delete(self, webhook_id: str) -> Response:
        state = self.sandbox.state
        with state.lock:
            state.webhook(webhook_id)
            del state.webhooks[webhook_id]
        return Response(status=204)


def _routes(sandbox: Sandbox) -> list[Route]:
    """The API's routes, each with its name and its view."""
    orders, resources = _OrderViews(sandbox), _ResourceViews(sandbox)
    return [
        Route("token", "/oauth/token", "POST", orders.token),
        Route("orders.list", "/api/orders", "GET", orders.orders_list),
        Route("orders.get", "/api/orders/<order_id>", "GET", orders.orders_get),
        Route("orders.patch", "/api/orders/<order_id>", "PATCH", orders.orders_patch),
        Route("customers.patch", "/api/customers/<customer_id>", "PATCH", orders.customers_patch),
        Route("customer_payment_sources", "/api/customer_payment_sources", "GET", orders.wallet_list),
        Route(
            "customer_payment_sources.delete",
            "/api/customer_payment_sources/<entry_id>",
            "DELETE",
            orders.wallet_delete,
        ),
        Route("events.list", "/api/events", "GET", resources.events_list),
        Route("events.patch", "/api/events/<event_id>", "PATCH", resources.events_patch),
        Route("webhooks.list", "/api/webhooks", "GET", resources.webhooks_list),
        Route("webhooks.create", "/api/webhooks", "POST", resources.webhooks_create),
        Route("webhooks.get", "/api/webhooks/<webhook_id>", "GET", resources.webhooks_get),
        Route("webhooks.patch", "/api/webhooks/<webhook_id>", "PATCH", resources.webhooks_patch),
        Route("webhooks.delete", "/api/webhooks/<webhook_id>", "DELETE", resources.webhooks_delete),
        Route("{rtype}.get", "/api/<rtype>/<rid>", "GET", resources.resource_get),
        Route("{rtype}.{rel}", "/api/<rtype>/<rid>/<rel>", "GET", resources.related_get),
        Route(
            "{rtype}.relationships.{rel}",
            "/api/<rtype>/<rid>/relationships/<rel>",
            "GET",
            resources.relationship_get,
        ),
    ]


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
    routes = _routes(sandbox)
    for route in routes:
        app.add_url_rule(route.rule, endpoint=route.endpoint, view_func=route.view, methods=[route.method])
    pipeline = Pipeline(sandbox, routes)
    app.before_request(pipeline.before)
    app.after_request(pipeline.after)
    app.register_error_handler(ApiError, error_response)
    app.register_error_handler(HTTPException, _http_error)
    control.init_app(app, sandbox)
    # Links follow X-Forwarded-Proto/-Host (a TLS proxy in front of the sandbox).
    proxied = ProxyFix(app.wsgi_app, x_for=0, x_proto=1, x_host=1, x_port=1)
    app.wsgi_app = ConnectionDropper(proxied)  # type: ignore[method-assign]
    return app
