"""The control API, under `/_sandbox/`: drive and observe the sandbox from tests and benchmarks.

Plain JSON in and out; no token needed: bind the sandbox to loopback only (the command line
warns when it is not). Every POST and PUT must carry `Content-Type: application/json` and a JSON
body (`{}` when there is nothing to say): 415 otherwise, 400 for an empty or malformed body. A web
page can send a "simple" cross-site POST (no body, a form, text/plain) without the browser asking
first; it cannot send `application/json` without a preflight, which the sandbox never approves,
so a page open in the developer's browser cannot reset or drive the sandbox.
Errors use the same `{"errors": [...]}` shape as the emulated API; a bad
scenario, configuration or fault spec is a 400 whose `source.pointer` names the offending key.

    GET    /_sandbox/health              {"status": "ok", "orders": N, "pending_deliveries": N}
    POST   /_sandbox/scenario            body: a scenario (as JSON); ?mode=replace (default) or
                                         merge; ?initial=true makes it what reset returns to.
                                         -> {"markets", "customers", "orders",
                                             "customer_payment_sources", "clients": [...],
                                             "webhooks": [{id, topic, callback_url, shared_secret}],
                                             "loaded": {...counts}}
    GET    /_sandbox/state               {"markets", "customers", "orders",
                                          "customer_payment_sources", "webhooks", "clients"}
    GET    /_sandbox/requests            ?route=orders.patch&method=PATCH&status=422&since=SEQ
                                         -> {"requests": [{seq, time, organization, token
                                             ({organization, client_id, sha256} or null),
                                             method, path, query, route,
                                             headers (Authorization redacted), body, status
                                             (null if dropped), faults, duration_ms}]}
    DELETE /_sandbox/requests            forget the request log
    GET    /_sandbox/stats               {"by_route": {"orders.get": {"200": 3}}, "requests",
                                          "rate_limited", "faults", "tokens", "wallet", "events",
                                          "sender", "pending_deliveries"}
    DELETE /_sandbox/stats               zero every counter and forget the request log
    GET    /_sandbox/faults              the active fault spec
    PUT    /_sandbox/faults              body: {"seed", "rules": [...], "sender": {...}} (replaces)
    DELETE /_sandbox/faults              no faults
    GET    /_sandbox/config              the configuration
    PUT    /_sandbox/config              body: partial configuration -> the whole configuration
    POST   /_sandbox/tokens/expire       body: {} -> every issued token expires now -> {"expired": N}
    POST   /_sandbox/events              body: {"topic", "order_id" | "order_ids": [...],
                                         "transition": false} -> 202 {"events": [{id, topic,
                                         order_id, webhook_ids}]}; for the
                                         customers.anonymization_* topics "customer_id" |
                                         "customer_ids" instead, and `transition` moves the
                                         anonymization request (anonymization.py)
    GET    /_sandbox/events              every triggered event
    GET    /_sandbox/event_callbacks     ?webhook_id=&event_id=&topic= -> {"event_callbacks":
                                         [{id, webhook_id, event_id, topic, attempt,
                                         callback_url, response_code, response_message,
                                         succeeded, lost_answer, duration_ms, created_at,
                                         signature, body}]} (oldest first; body is the exact text)
    POST   /_sandbox/sender/drain        body: {"timeout": 30} -> 200 {"drained": true,
                                         "pending": 0}, or 504 {"drained": false, "pending": N}
    GET    /_sandbox/organizations       (at the root only) the organizations this process serves
                                         (organizations.py); each one's control API is
                                         /_org/<slug>/_sandbox/...
    POST   /_sandbox/reset               body: {"empty": false} -> back to the initial scenario
                                         (or empty), default config, no faults, zero stats
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from commercelayer_sandbox.errors import ApiError, SandboxError
from commercelayer_sandbox.sandbox import Sandbox
from commercelayer_sandbox.timeutil import iso


def _invalid(exc: SandboxError) -> ApiError:
    pointer = "/" + exc.path.replace(".", "/").replace("[", "/").replace("]", "") if exc.path else None
    return ApiError(400, "SANDBOX_INVALID", "Invalid sandbox request", str(exc), pointer=pointer)


def _body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "BAD_REQUEST", "Bad request", "The body must be JSON ({} when there is nothing to say).")
    return body


def _json_only() -> None:
    """POST and PUT: `application/json` and a JSON body, or no change at all (see the docstring)."""
    if request.method not in ("POST", "PUT"):
        return
    if request.mimetype != "application/json":
        raise ApiError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "Unsupported media type",
            "Control requests need Content-Type: application/json and a JSON body ({} when there is nothing to say).",
        )
    _body()


def init_app(app: Flask, sandbox: Sandbox) -> None:
    """Mount the control API on `app` under `/_sandbox/`, one group of routes per concern."""
    bp = Blueprint("sandbox_control", __name__, url_prefix="/_sandbox")
    bp.before_request(_json_only)

    @bp.errorhandler(SandboxError)
    def invalid(exc: SandboxError) -> Response:
        err = _invalid(exc)
        return Response(app.json.dumps(err.document()), 400, content_type="application/json")

    _scenario_routes(bp, sandbox)
    _observation_routes(bp, sandbox)
    _settings_routes(bp, sandbox)
    _event_routes(bp, sandbox)
    app.register_blueprint(bp)


def _scenario_routes(bp: Blueprint, sandbox: Sandbox) -> None:
    """What the sandbox holds: health, load a scenario, its state, reset."""

    @bp.get("/health")
    def health() -> Response:
        return jsonify(
            status="ok",
            orders=len(sandbox.state.orders),
            pending_deliveries=sandbox.sender.pending(),
        )

    @bp.post("/scenario")
    def scenario() -> Response:
        mode = request.args.get("mode", "replace")
        if mode not in ("replace", "merge"):
            raise SandboxError("mode", "must be replace or merge")
        initial = request.args.get("initial", "false").lower() == "true"
        return jsonify(sandbox.load_scenario(_body(), replace=mode == "replace", initial=initial))

    @bp.get("/state")
    def state() -> Response:
        return jsonify(sandbox.state.snapshot())

    @bp.post("/reset")
    def reset() -> Response:
        body = _body()
        empty = bool(body.get("empty", False)) if isinstance(body, dict) else False
        return jsonify(sandbox.reset(reload=not empty))


def _observation_routes(bp: Blueprint, sandbox: Sandbox) -> None:
    """What the sandbox saw: the request log and the counters."""

    @bp.get("/requests")
    def requests_log() -> Response:
        status = request.args.get("status")
        since = request.args.get("since", "0")
        if (status is not None and not status.isdigit()) or not since.isdigit():
            raise SandboxError("status" if status and not status.isdigit() else "since", "must be an integer")
        return jsonify(
            requests=sandbox.stats.requests(
                route=request.args.get("route"),
                method=request.args.get("method"),
                status=int(status) if status else None,
                since=int(since),
            )
        )

    @bp.delete("/requests")
    def clear_requests() -> Response:
        sandbox.stats.clear_requests()
        return Response(status=204)

    @bp.get("/stats")
    def stats() -> Response:
        out = sandbox.stats.snapshot()
        out["pending_deliveries"] = sandbox.sender.pending()
        return jsonify(out)

    @bp.delete("/stats")
    def clear_stats() -> Response:
        sandbox.stats.reset()
        return Response(status=204)


def _settings_routes(bp: Blueprint, sandbox: Sandbox) -> None:
    """How the sandbox behaves: faults, configuration, token expiry."""

    @bp.get("/faults")
    def faults() -> Response:
        return jsonify(sandbox.faults.to_dict())

    @bp.put("/faults")
    def set_faults() -> Response:
        sandbox.faults.configure(_body())
        return jsonify(sandbox.faults.to_dict())

    @bp.delete("/faults")
    def clear_faults() -> Response:
        sandbox.faults.clear()
        return Response(status=204)

    @bp.get("/config")
    def config() -> Response:
        return jsonify(sandbox.config.to_dict())

    @bp.put("/config")
    def set_config() -> Response:
        return jsonify(sandbox.update_config(_body()).to_dict())

    @bp.post("/tokens/expire")
    def expire_tokens() -> Response:
        return jsonify(expired=sandbox.state.expire_tokens(now=sandbox.now()))


def _event_routes(bp: Blueprint, sandbox: Sandbox) -> None:
    """Webhook events: trigger them, list them, their callbacks, wait for the sender."""

    @bp.post("/events")
    def trigger() -> tuple[Response, int]:
        body = _body()
        if not isinstance(body, dict):
            raise SandboxError("", "the body must be an object")
        transition = bool(body.get("transition", False))
        if "customer_id" in body or "customer_ids" in body:
            cids = _ids(body, "customer_id", "customer_ids")
            fired = sandbox.trigger_customers(_topic(body), cids, transition=transition)
            return jsonify(events=[_event(e) for e in fired]), 202
        ids = _ids(body, "order_id", "order_ids")
        events = sandbox.trigger(_topic(body), ids, transition=transition)
        return jsonify(events=[_event(e) for e in events]), 202

    @bp.get("/events")
    def events() -> Response:
        with sandbox.state.lock:
            return jsonify(events=[_event(e) for e in sandbox.state.events.values()])

    @bp.get("/event_callbacks")
    def callbacks() -> Response:
        args = request.args
        with sandbox.state.lock:
            items = [
                c
                for c in sandbox.state.callbacks
                if all(args.get(k) in (None, getattr(c, k)) for k in ("webhook_id", "event_id", "topic"))
            ]
        return jsonify(event_callbacks=[_callback(c) for c in items])

    @bp.post("/sender/drain")
    def drain() -> tuple[Response, int]:
        body = _body()
        timeout = body.get("timeout", 30) if isinstance(body, dict) else 30
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise SandboxError("timeout", "must be a non-negative number of seconds")
        drained = sandbox.sender.drain(float(timeout))
        return jsonify(drained=drained, pending=sandbox.sender.pending()), 200 if drained else 504


def _ids(body: dict[str, Any], one: str, many: str) -> list[str]:
    """`one` (a string) or `many` (a non-empty list of strings) from a trigger's body."""
    ids = body.get(many, [body[one]] if one in body else None)
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise SandboxError(many, f"give {one} (a string) or {many} (a list of strings)")
    return ids


def _topic(body: dict[str, Any]) -> str:
    topic = body.get("topic")
    if not isinstance(topic, str):
        raise SandboxError("topic", "is required")
    return topic


def _callback(c: Any) -> dict[str, Any]:
    return {
        "id": c.id,
        "webhook_id": c.webhook_id,
        "event_id": c.event_id,
        "topic": c.topic,
        "attempt": c.attempt,
        "callback_url": c.callback_url,
        "response_code": c.response_code,
        "response_message": c.response_message,
        "succeeded": c.succeeded,
        "lost_answer": c.lost_answer,
        "duration_ms": c.duration_ms,
        "created_at": iso(c.created_at),
        "signature": c.signature,
        "body": c.body.decode("utf-8"),
    }


def _event(e: Any) -> dict[str, Any]:
    return {
        "id": e.id,
        "topic": e.topic,
        "order_id": e.order_id if e.resource_type == "orders" else None,
        "customer_id": e.order_id if e.resource_type == "customers" else None,
        "webhook_ids": e.webhook_ids,
        "created_at": iso(e.created_at),
    }
