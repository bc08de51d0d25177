"""The client that talks HTTP to Commerce Layer (with `oauth.py`, its tokens, and `failures.py`,
how what goes wrong becomes CommerceLayerError: the only requests-based code here).

One `requests.Session` per client; OAuth2 client credentials (`oauth.TokenSource`) with the token
cached until shortly before it expires and refreshed once on a 401; JSON:API media types; an explicit
(connect, read) timeout on every call; a client-side rate limit. Failures become
CommerceLayerError: 429, 5xx, timeouts and connection errors are retryable, other 4xx are
permanent and keep Commerce Layer's `errors[].detail`; a refused token, or a 401 to a token just
issued, is CredentialsRefused (the deployment's fault: it names the settings to check). Retrying
is the worker's job (it reschedules the job with backoff), so one call here is one request (plus
at most one token refresh).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson
import requests

from webhook_app import tracing
from webhook_app.commercelayer.api import CallRecord
from webhook_app.commercelayer.failures import error_from, hold_for, refused_api, unanswered
from webhook_app.commercelayer.failures import parse_retry_after as parse_retry_after  # re-exported
from webhook_app.commercelayer.oauth import TokenCache, TokenSource
from webhook_app.config import Settings
from webhook_app.errors import CredentialsRefused, NotSent, PermanentCommerceLayerError, RetryableCommerceLayerError
from webhook_app.ratelimit import LocalRateLimiter, RateLimiter, wait_for_slot

log = logging.getLogger(__name__)

JSONAPI = "application/vnd.api+json"
USER_AGENT = "webhook-app/0.1 (+https://github.com/)"


#: Asked right before a write is sent (after its wait for a rate-limit slot): False, not sent.
Confirm = Callable[[], bool] | None
Params = Mapping[str, str] | None


class CommerceLayerClient:
    """Commerce Layer API client for the calls this service makes."""

    def __init__(
        self,
        *,
        api_base: str,
        auth_url: str,
        client_id: str,
        client_secret: str,
        scope: str = "",
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        token_margin: float = 300.0,
        limiter: RateLimiter | None = None,
        auth_limiter: RateLimiter | None = None,
        token_cache: TokenCache | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
    ) -> None:
        base = api_base.rstrip("/")
        self.api_base = base.removesuffix("/api")
        self.client_id = client_id
        self.timeout = (connect_timeout, read_timeout)
        self.limiter = limiter or LocalRateLimiter((), clock=clock)
        self.clock = clock
        self.sleep = sleep
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.on_call = on_call
        self.auth = TokenSource(
            auth_url=auth_url,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            token_margin=token_margin,
            timeout=self.timeout,
            limiter=auth_limiter or LocalRateLimiter((), clock=clock),
            cache=token_cache or TokenCache(),
            session=self.session,
            clock=clock,
            sleep=sleep,
            record=self._record,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> CommerceLayerClient:
        kw.setdefault("limiter", LocalRateLimiter(settings.cl_rate_limits))
        kw.setdefault("auth_limiter", LocalRateLimiter(settings.cl_auth_rate_limits))
        return cls(
            api_base=settings.cl_api_base,
            auth_url=settings.cl_auth_url,
            client_id=settings.cl_client_id,
            client_secret=settings.cl_client_secret,
            scope=settings.cl_scope,
            connect_timeout=settings.cl_connect_timeout,
            read_timeout=settings.cl_read_timeout,
            token_margin=settings.cl_token_margin,
            **kw,
        )

    def __repr__(self) -> str:  # never show the secret
        return f"CommerceLayerClient(api_base={self.api_base!r}, client_id={self.client_id!r})"

    def close(self) -> None:
        self.session.close()

    @property
    def auth_limiter(self) -> RateLimiter:
        """The token endpoint's rate limit (another client of the same egress may share it)."""
        return self.auth.limiter

    # --- token ----------------------------------------------------------------------------
    def access_token(self) -> str:
        return self.auth.access_token()

    def check_credentials(self, *, api: bool = False) -> None:
        """One token request now, even with a token cached (the new token is kept), and with `api`
        one read of a single order id with it: returns if Commerce Layer accepts the credentials,
        raises CredentialsRefused if it refuses them and RetryableCommerceLayerError if it could
        not be asked (down, unreachable, 5xx)."""
        self.auth.renew()
        if api:
            try:
                self._request(
                    "GET", "/api/orders", route="orders.list", params={"page[size]": "1", "fields[orders]": "id"}
                )
            except CredentialsRefused:
                raise
            except PermanentCommerceLayerError:
                pass  # answered, and not with a 401: the token was accepted

    # --- API calls --------------------------------------------------------------------------
    def get_order(self, order_id: str, *, include: Iterable[str] = ()) -> dict[str, Any]:
        return self._request("GET", f"/api/orders/{_safe(order_id)}", route="orders.get", params=_include(include))

    def update_order(
        self, order_id: str, attributes: Mapping[str, Any], *, include: Iterable[str] = (), confirm: Confirm = None
    ) -> dict[str, Any]:
        """PATCH /api/orders/{id} with `attributes` (the body `orderUpdate` describes); `confirm`:
        see CommerceLayerAPI.update_order."""
        return self._patch("orders", order_id, attributes, route="orders.patch", include=include, confirm=confirm)

    def _patch(self, kind: str, rid: str, attributes: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
        """`PATCH /api/{kind}/{rid}` with `attributes` (`kw`: route, include, confirm): the answer's document."""
        body = {"data": {"type": kind, "id": rid, "attributes": dict(attributes)}}
        kw["params"] = _include(kw.pop("include", ()))
        return self._request("PATCH", f"/api/{kind}/{_safe(rid)}", body=body, **kw)

    def list_orders(self, *, params: Mapping[str, str], page_size: int = 25) -> Iterator[dict[str, Any]]:
        """Every order matching `params` (JSON:API filters), following pagination."""
        return self._pages("/api/orders", route="orders.list", params=params, page_size=page_size)

    def _pages(
        self, path: str, *, route: str, params: Mapping[str, str] | None = None, page_size: int = 25
    ) -> Iterator[dict[str, Any]]:
        """The resources of a list endpoint, page after page until `meta.page_count`."""
        for doc in self._page_documents(path, route=route, params=params or {}, page_size=page_size):
            yield from doc.get("data") or []

    def _page_documents(
        self, path: str, *, route: str, params: Mapping[str, str], page_size: int
    ) -> Iterator[dict[str, Any]]:
        """Each page's whole document of a list endpoint, until `meta.page_count` or an empty page."""
        page = 1
        while True:
            q = {**params, "page[size]": str(page_size), "page[number]": str(page)}
            doc = self._request("GET", path, route=route, params=q)
            yield doc
            if page >= int((doc.get("meta") or {}).get("page_count") or 0) or not doc.get("data"):
                return
            page += 1

    # --- the wallet (hygiene) ----------------------------------------------------------------
    def list_wallet_pages(
        self, *, customer_id: str | None = None, include: Iterable[str] = (), page_size: int = 25
    ) -> Iterator[dict[str, Any]]:
        """`GET /api/customer_payment_sources`, page by page, each page's whole document (its
        `included` carries the entries' payment sources); one customer's with `customer_id`."""
        params = _include(include)
        if customer_id is not None:
            params["filter[q][customer_id_eq]"] = customer_id
        return self._page_documents(
            "/api/customer_payment_sources", route="customer_payment_sources.list", params=params, page_size=page_size
        )

    def delete_wallet_entry(self, entry_id: str) -> None:
        """`DELETE /api/customer_payment_sources/{id}` (204)."""
        self._request(
            "DELETE", f"/api/customer_payment_sources/{_safe(entry_id)}", route="customer_payment_sources.delete"
        )

    # --- events (fire one again) ------------------------------------------------------------
    def list_order_events(self, order_id: str, *, limit: int = 1000) -> list[dict[str, Any]]:
        """`GET /api/orders/{id}/events`, page after page (at most `limit`): the order's events,
        each named by its topic (`attributes.name`, e.g. `orders.place`)."""
        pages = self._pages(f"/api/orders/{_safe(order_id)}/events", route="orders.events")
        return list(itertools.islice(pages, limit))

    def get_event(self, event_id: str) -> dict[str, Any]:
        """`GET /api/events/{id}`: the event resource (`data`)."""
        doc = self._request("GET", f"/api/events/{_safe(event_id)}", route="events.get")
        return doc.get("data") or {}

    def trigger_event(self, event_id: str) -> dict[str, Any]:
        """`PATCH /api/events/{id}` with `_trigger: true`: Commerce Layer sends the event to its
        webhooks again (integration credentials: sales channels may not)."""
        return self._patch("events", event_id, {"_trigger": True}, route="events.patch").get("data") or {}

    # --- webhooks (registration and circuit status) ----------------------------------------
    def list_webhooks(self) -> list[dict[str, Any]]:
        return list(self._pages("/api/webhooks", route="webhooks.list"))

    def create_webhook(
        self, *, topic: str, callback_url: str, include_resources: list[str], name: str | None = None
    ) -> dict[str, Any]:
        attrs: dict[str, Any] = {"topic": topic, "callback_url": callback_url, "include_resources": include_resources}
        if name:
            attrs["name"] = name
        doc = self._request(
            "POST",
            "/api/webhooks",
            route="webhooks.create",
            body={"data": {"type": "webhooks", "attributes": attrs}},
        )
        return doc.get("data") or {}

    def reset_webhook_circuit(self, webhook_id: str) -> dict[str, Any]:
        return self._patch("webhooks", webhook_id, {"_reset_circuit": True}, route="webhooks.patch").get("data") or {}

    def list_event_callbacks(self, webhook_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """`GET /api/webhooks/{id}/last_event_callbacks`, page after page, at most `limit` of them."""
        pages = self._pages(f"/api/webhooks/{_safe(webhook_id)}/last_event_callbacks", route="webhooks.callbacks")
        return list(itertools.islice(pages, limit))

    def _request(
        self, method: str, path: str, *, route: str, params: Params = None, body: Any = None, confirm: Confirm = None
    ) -> dict[str, Any]:
        refreshed = False
        while True:
            token = self.auth.access_token()
            waited = wait_for_slot(self.limiter, clock=self.clock, sleep=self.sleep)
            if confirm is not None and not confirm():  # the wait may have outlasted the caller's claims
                raise NotSent(f"{method} {route} not sent: the caller's claims were taken over")
            started = time.monotonic()
            status: int | None = None
            cl_trace_id: str | None = None
            writes = method not in ("GET", "HEAD")
            attrs = {"http.request.method": method, "url.path": path, "commercelayer.route": route}
            with tracing.span(f"commercelayer {method} {route}", kind="client", attributes=attrs) as sp:
                try:
                    resp = self.session.request(
                        method,
                        self.api_base + path,
                        params=params,
                        json=body,
                        headers=_headers(token, body),
                        timeout=self.timeout,
                    )
                    status = resp.status_code
                    answer = _json_answer(resp)
                    cl_trace_id = _trace_id(answer)
                    sp.set("http.response.status_code", status)
                    sp.set("commercelayer.trace_id", cl_trace_id)
                except requests.RequestException as exc:
                    raise unanswered(
                        exc, f"{method} {route}", self.api_base, "CL_API_BASE", self.timeout, uncertain=writes
                    ) from exc
                finally:
                    self._record(method, route, status, time.monotonic() - started, waited, cl_trace_id)
            if resp.status_code == 429:
                # Refused over the limit: every call of this budget waits, not only this job.
                hold_for(self.limiter, resp, clock=self.clock)
            if resp.status_code == 401 and not refreshed:
                self.auth.invalidate(token)
                refreshed = True
                continue
            if resp.status_code == 401:
                # Refused a token just issued: the credentials belong elsewhere (another organization).
                raise refused_api(resp, f"{method} {route}")
            return _document(resp, answer, f"{method} {route}", uncertain=writes)

    def _record(
        self, method: str, route: str, status: int | None, seconds: float, waited: float, trace_id: str | None = None
    ) -> None:
        if self.on_call is not None:
            self.on_call(CallRecord(method, route, status, seconds, waited, trace_id))


_NOT_JSON: Any = object()


def _headers(token: str, body: Any) -> dict[str, str]:
    """A request's headers: JSON:API (as its body's type too, when it has one) and the token."""
    headers = {"Accept": JSONAPI, "Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = JSONAPI
    return headers


def _document(resp: requests.Response, answer: Any, what: str, *, uncertain: bool) -> dict[str, Any]:
    """A 2xx answer's JSON document (`{}` for none); CommerceLayerError for any other answer."""
    if not 200 <= resp.status_code < 300:
        raise error_from(resp, what, uncertain=uncertain)
    if resp.status_code == 204 or not resp.content:
        return {}
    if answer is _NOT_JSON:
        raise RetryableCommerceLayerError(f"{what}: answer is not JSON", status=resp.status_code, uncertain=uncertain)
    return answer if isinstance(answer, dict) else {}


def _json_answer(resp: requests.Response) -> Any:
    """The answer's JSON, decoded once (orjson: the worker reads every answer, on the way from
    receipt to PATCH acknowledged); `_NOT_JSON` if it has none."""
    if not resp.content:
        return _NOT_JSON
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def _trace_id(answer: Any) -> str | None:
    """Commerce Layer's `meta.trace_id` of an answer (success or error), if it has one."""
    meta = answer.get("meta") if isinstance(answer, dict) else None
    value = meta.get("trace_id") if isinstance(meta, dict) else None
    return str(value)[:128] if value else None


def _include(include: Iterable[str]) -> dict[str, str]:
    inc = ",".join(include)
    return {"include": inc} if inc else {}


def _safe(resource_id: str) -> str:
    """Ids go into URL paths: refuse anything that is not a plain Commerce Layer id."""
    if not resource_id or not all(ch.isalnum() or ch in "-_" for ch in resource_id) or len(resource_id) > 64:
        raise PermanentCommerceLayerError(f"refusing to call Commerce Layer with id {resource_id[:70]!r}")
    return resource_id
