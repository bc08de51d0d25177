"""What every routed request goes through, around its view: `Pipeline.before` and `.after`.

Every request to a route of the API (`api.py`) goes through, in order: the rate limiter (429;
windows counted per client address, shared by the organizations of one process), injected faults
(latency, hang, drop, 5xx; late answers are held after the handler), then for `/api/*` the media
types (406 without `Accept: application/vnd.api+json`, 415 for a body that is not
`application/vnd.api+json`) and the bearer token (401), then the handler. Every answer carries the
`x-ratelimit-*` headers, every request is logged (`/_sandbox/requests`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Response, g, request

from commercelayer_sandbox import tokens
from commercelayer_sandbox.answers import API_JSON, error_response, fault_error
from commercelayer_sandbox.config import Window
from commercelayer_sandbox.errors import ApiError
from commercelayer_sandbox.faults import NO_FAULT, FaultDecision
from commercelayer_sandbox.sandbox import Sandbox
from commercelayer_sandbox.stats import redact_body, redact_headers
from commercelayer_sandbox.timeutil import iso

DROP_KEY = "commercelayer_sandbox.drop"


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

    def name_for(self, view_args: dict[str, Any] | None) -> str:
        """The route name; generic routes name themselves after their type and relationship
        (`orders.customer`, `markets.get`); a customer's wallet keeps its historic name."""
        if "{" not in self.name:
            return self.name
        args = view_args or {}
        if args.get("rtype") == "customers" and args.get("rel") == "customer_payment_sources":
            return "customer_payment_sources"
        return self.name.format(**args)


class ConnectionDropper:
    """WSGI middleware: when a handler marked the request as dropped, close the TCP connection
    without writing anything (SO_LINGER 0, so the client sees a reset), and tell werkzeug the
    connection is gone (it treats ConnectionError as a dropped client and stays quiet)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
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


class Pipeline:
    """Rate limit, faults, media types and token before a route's view; late faults, rate-limit
    headers and the request log after it."""

    def __init__(self, sandbox: Sandbox, routes: Iterable[Route]) -> None:
        self.sandbox = sandbox
        self.by_endpoint = {r.endpoint: r for r in routes}

    def before(self) -> Response | None:
        """Rate limit, injected faults, then (for `/api/*`) media types and token."""
        route = self.by_endpoint.get(request.endpoint or "")
        if route is None:
            if request.path.startswith(("/api/", "/oauth/")):
                g.sandbox_route = "unrouted"
                g.sandbox_started = time.monotonic()
            return None
        g.sandbox_route = route.name_for(request.view_args)
        g.sandbox_started = time.monotonic()
        g.trace_id = secrets.token_hex(32)
        self._rate_limit(route)
        dropped = self._inject_faults()
        if dropped is not None:
            return dropped
        if route.rate_class == "api":
            self._check_media_types()
            self._check_token()
        return None

    def _rate_limit(self, route: Route) -> None:
        """Count the request in its windows; 429 when one is full."""
        sandbox, cfg = self.sandbox, self.sandbox.config
        windows: list[tuple[tuple[str, ...], Window]]
        # Counted per client address, across the organizations of this process (Commerce
        # Layer's limits are per IP): the address is part of every window's key.
        addr = request.remote_addr or "-"
        if route.rate_class == "auth":
            windows = [(("auth", addr), w) for w in cfg.auth_limits]
        else:
            windows = [(("api", addr), w) for w in cfg.api_limits]
            windows += [(("endpoint", g.sandbox_route, addr), w) for w in cfg.endpoint_limits]
        verdict = sandbox.limiter.hit(windows, count_refused=cfg.rate_limit_count_refused)
        g.sandbox_ratelimit = verdict
        if verdict is not None and not verdict.allowed:
            kind = verdict.key[0]
            sandbox.stats.count("rate_limited.total")
            sandbox.stats.count(f"rate_limited.{kind}")
            headers = {}
            if cfg.retry_after is not None:
                headers["Retry-After"] = str(max(1, round(cfg.retry_after or verdict.retry_in + 0.5)))
            raise ApiError(
                429,
                "TOO_MANY_REQUESTS",
                "Too many requests",
                f"You have exceeded the rate limit of {verdict.limit} requests in {verdict.interval:g} seconds.",
                headers=headers,
            )

    def _inject_faults(self) -> Response | None:
        """The faults that strike before the handler: wait, then drop or fail (the others, `after`)."""
        sandbox = self.sandbox
        decision = sandbox.faults.decide(g.sandbox_route)
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
        return None

    def after(self, response: Response) -> Response:
        route = g.get("sandbox_route")
        if route is None:
            return response
        decision: FaultDecision = g.get("sandbox_fault", NO_FAULT)
        if decision.apply_then_fail and response.status_code < 400 and not request.environ.get(DROP_KEY):
            if decision.drop:
                request.environ[DROP_KEY] = True
            elif decision.error_status:
                response = error_response(fault_error(decision.error_status))
        # Applied already; a late answer waits (past the client's read timeout).
        if (
            decision.late_answer
            and not request.environ.get(DROP_KEY)
            and self.sandbox.stopping.wait(decision.late_answer)
        ):
            request.environ[DROP_KEY] = True
        verdict = g.get("sandbox_ratelimit")
        if verdict is not None:
            response.headers.update(verdict.headers())
        dropped = bool(request.environ.get(DROP_KEY))
        self.sandbox.stats.record_request(
            {
                "time": iso(self.sandbox.now_ms()),
                "organization": self.sandbox.config.organization_slug,
                "token": _token_seen(g.get("token_claims"), g.get("token_value")),
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
        accepted = [part.split(";")[0].strip().lower() for part in request.headers.get("Accept", "").split(",")]
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
                f"All requests that create or update must use the '{API_JSON}' Content-Type header.",
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
        sandbox = self.sandbox
        try:
            claims = tokens.decode(value, secret=sandbox.token_secret)
        except tokens.InvalidToken:
            claims = None
        known = claims is not None and value in sandbox.state.tokens
        if not known:
            raise ApiError(
                401,
                "INVALID_TOKEN",
                "Invalid token",
                "The access token you provided is invalid.",
            )
        now = sandbox.now()
        exp = claims.get("exp") if claims else None
        if sandbox.state.valid_token(value, now=now) is None or not isinstance(exp, int | float) or now >= exp:
            raise ApiError(
                401,
                "INVALID_TOKEN",
                "Token expired",
                "The access token you provided has expired.",
            )
        g.token_claims = claims
        g.token_value = value


def _token_seen(claims: dict[str, Any] | None, value: str | None) -> dict[str, Any] | None:
    """Which token made a request, for the request log: never the token itself, but its
    organization and client and a fingerprint (the first 16 hex digits of its SHA-256)."""
    if claims is None or value is None:
        return None
    org, app = claims.get("organization"), claims.get("application")
    org = org if isinstance(org, dict) else {}
    app = app if isinstance(app, dict) else {}
    return {
        "organization": org.get("slug"),
        "client_id": app.get("client_id"),
        "sha256": hashlib.sha256(value.encode()).hexdigest()[:16],
    }
