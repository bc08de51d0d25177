"""The only module that talks HTTP to Commerce Layer.

One `requests.Session` per client; OAuth2 client credentials with the token cached until
shortly before it expires and refreshed once on a 401; JSON:API media types; an explicit
(connect, read) timeout on every call; a client-side rate limit. Failures become
CommerceLayerError: 429, 5xx, timeouts and connection errors are retryable, other 4xx are
permanent and keep Commerce Layer's `errors[].detail`; a refused token, or a 401 to a token just
issued, is CredentialsRefused (the deployment's fault: it names the settings to check). Retrying
is the worker's job (it reschedules the job with backoff), so one call here is one request (plus
at most one token refresh).
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests

from webhook_app import tracing
from webhook_app.commercelayer.api import CallRecord
from webhook_app.config import Settings
from webhook_app.errors import (
    CommerceLayerError,
    CredentialsRefused,
    PermanentCommerceLayerError,
    RetryableCommerceLayerError,
)
from webhook_app.ratelimit import LocalRateLimiter, RateLimiter, wait_for_slot

log = logging.getLogger(__name__)

JSONAPI = "application/vnd.api+json"
USER_AGENT = "webhook-app/0.1 (+https://github.com/)"


@dataclass
class Token:
    value: str
    expires_at: float


class TokenCache:
    """Holds the current access token for this process. A shared cache may replace it."""

    def __init__(self) -> None:
        self._token: Token | None = None
        self._lock = threading.Lock()

    def get(self, now: float) -> str | None:
        t = self._token
        return t.value if t is not None and t.expires_at > now else None

    def put(self, value: str, expires_at: float) -> None:
        self._token = Token(value, expires_at)

    def invalidate(self, value: str) -> None:
        if self._token is not None and self._token.value == value:
            self._token = None

    @property
    def lock(self) -> threading.Lock:
        return self._lock


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
        self.auth_url = auth_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self.timeout = (connect_timeout, read_timeout)
        self.token_margin = token_margin
        self.limiter = limiter or LocalRateLimiter((), clock=clock)
        self.auth_limiter = auth_limiter or LocalRateLimiter((), clock=clock)
        self.tokens = token_cache or TokenCache()
        self.clock = clock
        self.sleep = sleep
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.on_call = on_call

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

    # --- token ----------------------------------------------------------------------------
    def access_token(self) -> str:
        now = self.clock()
        token = self.tokens.get(now)
        if token:
            return token
        with self.tokens.lock:
            token = self.tokens.get(self.clock())
            if token:
                return token
            return self._fetch_token()

    def _fetch_token(self) -> str:
        body = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._client_secret}
        if self.scope:
            body["scope"] = self.scope
        waited = wait_for_slot(self.auth_limiter, clock=self.clock, sleep=self.sleep)
        started = time.monotonic()
        status = None
        try:
            resp = self.session.post(
                self.auth_url, json=body, timeout=self.timeout, headers={"Accept": "application/json"}
            )
            status = resp.status_code
        except requests.ConnectTimeout as exc:
            raise RetryableCommerceLayerError(
                f"token request: {unreachable(self.auth_url, 'CL_AUTH_URL', exc, self.timeout[0])}"
            ) from exc
        except requests.Timeout as exc:
            raise RetryableCommerceLayerError("token request timed out") from exc
        except requests.ConnectionError as exc:
            raise RetryableCommerceLayerError(
                f"token request: {unreachable(self.auth_url, 'CL_AUTH_URL', exc, self.timeout[0])}"
            ) from exc
        except requests.RequestException as exc:
            raise RetryableCommerceLayerError(f"token request failed: {type(exc).__name__}") from exc
        finally:
            self._record("POST", "token", status, time.monotonic() - started, waited)
        if 400 <= resp.status_code < 500 and resp.status_code != 429:
            raise _refused_token(resp)
        if resp.status_code != 200:
            raise _error_from(resp, "token request", uncertain=False)
        try:
            data = resp.json()
            value = str(data["access_token"])
            expires_in = float(data.get("expires_in", 7200))
        except (ValueError, KeyError, TypeError) as exc:
            raise RetryableCommerceLayerError("token answer is not the expected JSON") from exc
        margin = min(self.token_margin, expires_in / 2)
        self.tokens.put(value, self.clock() + expires_in - margin)
        return value

    def check_credentials(self, *, api: bool = False) -> None:
        """One token request now, even with a token cached (the new token is kept), and with `api`
        one read of a single order id with it: returns if Commerce Layer accepts the credentials,
        raises CredentialsRefused if it refuses them and RetryableCommerceLayerError if it could
        not be asked (down, unreachable, 5xx)."""
        with self.tokens.lock:
            self._fetch_token()
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
        self, order_id: str, attributes: Mapping[str, Any], *, include: Iterable[str] = ()
    ) -> dict[str, Any]:
        """PATCH /api/orders/{id} with `attributes` (the body `orderUpdate` describes)."""
        body = {"data": {"type": "orders", "id": order_id, "attributes": dict(attributes)}}
        return self._request(
            "PATCH", f"/api/orders/{_safe(order_id)}", route="orders.patch", params=_include(include), json_body=body
        )

    def list_orders(self, *, params: Mapping[str, str], page_size: int = 25) -> Iterator[dict[str, Any]]:
        """Every order matching `params` (JSON:API filters), following pagination."""
        return self._pages("/api/orders", route="orders.list", params=params, page_size=page_size)

    def _pages(
        self, path: str, *, route: str, params: Mapping[str, str] | None = None, page_size: int = 25
    ) -> Iterator[dict[str, Any]]:
        """The resources of a list endpoint, page after page until `meta.page_count`."""
        page = 1
        while True:
            q = dict(params or {})
            q["page[size]"] = str(page_size)
            q["page[number]"] = str(page)
            doc = self._request("GET", path, route=route, params=q)
            data = doc.get("data") or []
            yield from data
            if page >= int((doc.get("meta") or {}).get("page_count") or 0) or not data:
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
        page = 1
        while True:
            q = {**params, "page[size]": str(page_size), "page[number]": str(page)}
            doc = self._request("GET", "/api/customer_payment_sources", route="customer_payment_sources.list", params=q)
            yield doc
            if page >= int((doc.get("meta") or {}).get("page_count") or 0) or not doc.get("data"):
                return
            page += 1

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
        doc = self._request(
            "PATCH",
            f"/api/events/{_safe(event_id)}",
            route="events.patch",
            json_body={"data": {"type": "events", "id": event_id, "attributes": {"_trigger": True}}},
        )
        return doc.get("data") or {}

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
            json_body={"data": {"type": "webhooks", "attributes": attrs}},
        )
        return doc.get("data") or {}

    def reset_webhook_circuit(self, webhook_id: str) -> dict[str, Any]:
        doc = self._request(
            "PATCH",
            f"/api/webhooks/{_safe(webhook_id)}",
            route="webhooks.patch",
            json_body={"data": {"type": "webhooks", "id": webhook_id, "attributes": {"_reset_circuit": True}}},
        )
        return doc.get("data") or {}

    def list_event_callbacks(self, webhook_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """`GET /api/webhooks/{id}/last_event_callbacks`, page after page, at most `limit` of them."""
        pages = self._pages(f"/api/webhooks/{_safe(webhook_id)}/last_event_callbacks", route="webhooks.callbacks")
        return list(itertools.islice(pages, limit))

    def _request(
        self, method: str, path: str, *, route: str, params: Mapping[str, str] | None = None, json_body: Any = None
    ) -> dict[str, Any]:
        refreshed = False
        while True:
            token = self.access_token()
            waited = wait_for_slot(self.limiter, clock=self.clock, sleep=self.sleep)
            headers = {"Accept": JSONAPI, "Authorization": f"Bearer {token}"}
            if json_body is not None:
                headers["Content-Type"] = JSONAPI
            started = time.monotonic()
            status = None
            cl_trace_id = None
            writes = method not in ("GET", "HEAD")
            attrs = {"http.request.method": method, "url.path": path, "commercelayer.route": route}
            with tracing.span(f"commercelayer {method} {route}", kind="client", attributes=attrs) as sp:
                try:
                    resp = self.session.request(
                        method,
                        self.api_base + path,
                        params=params,
                        json=json_body,
                        headers=headers,
                        timeout=self.timeout,
                    )
                    status = resp.status_code
                    answer = _json_answer(resp)
                    cl_trace_id = _trace_id(answer)
                    sp.set("http.response.status_code", status)
                    sp.set("commercelayer.trace_id", cl_trace_id)
                except requests.ConnectTimeout as exc:
                    raise RetryableCommerceLayerError(
                        f"{method} {route}: {unreachable(self.api_base, 'CL_API_BASE', exc, self.timeout[0])}"
                    ) from exc
                except requests.ReadTimeout as exc:
                    raise RetryableCommerceLayerError(
                        f"{method} {route}: no answer within {self.timeout[1]} s", uncertain=writes
                    ) from exc
                except requests.ConnectionError as exc:
                    raise RetryableCommerceLayerError(
                        f"{method} {route}: {unreachable(self.api_base, 'CL_API_BASE', exc, self.timeout[0])}",
                        uncertain=writes,
                    ) from exc
                except requests.RequestException as exc:
                    raise RetryableCommerceLayerError(
                        f"{method} {route}: {type(exc).__name__}", uncertain=writes
                    ) from exc
                finally:
                    self._record(method, route, status, time.monotonic() - started, waited, cl_trace_id)
            if resp.status_code == 401 and not refreshed:
                self.tokens.invalidate(token)
                refreshed = True
                continue
            if resp.status_code == 401:
                # Refused a token just issued: the credentials belong elsewhere (another organization).
                raise _refused_api(resp, f"{method} {route}")
            if 200 <= resp.status_code < 300:
                if resp.status_code == 204 or not resp.content:
                    return {}
                if answer is _NOT_JSON:
                    raise RetryableCommerceLayerError(
                        f"{method} {route}: answer is not JSON", status=resp.status_code, uncertain=writes
                    )
                return answer if isinstance(answer, dict) else {}
            raise _error_from(resp, f"{method} {route}", uncertain=writes)

    def _record(
        self, method: str, route: str, status: int | None, seconds: float, waited: float, trace_id: str | None = None
    ) -> None:
        if self.on_call is not None:
            self.on_call(CallRecord(method, route, status, seconds, waited, trace_id))


_NOT_JSON: Any = object()


_UNREACHABLE = (
    ("Connection refused", "connection refused"),
    ("Name or service not known", "unknown host"),
    ("Temporary failure in name resolution", "unknown host (name resolution failed)"),
    ("No address associated with hostname", "unknown host"),
    ("nodename nor servname", "unknown host"),
    ("CERTIFICATE_VERIFY_FAILED", "its TLS certificate is not trusted"),
    ("Network is unreachable", "network unreachable"),
    ("No route to host", "no route to host"),
    ("Connection reset", "connection reset"),
    ("RemoteDisconnected", "connection closed without an answer"),
)


def unreachable(url: str, variable: str, exc: requests.RequestException, connect_timeout: float) -> str:
    """`cannot reach https://host (VARIABLE): why`: the host and the setting to check, never a path
    or query (the host is not a secret)."""
    parts = urlsplit(url)
    where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    if isinstance(exc, requests.ConnectTimeout):
        return f"cannot reach {where} ({variable}): no connection within {connect_timeout:g} s"
    text = str(exc)
    why = next((say for needle, say in _UNREACHABLE if needle in text), None)
    if why is None:
        why = "TLS error" if isinstance(exc, requests.exceptions.SSLError) else type(exc).__name__
    return f"cannot reach {where} ({variable}): {why}"


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


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _refused_token(resp: requests.Response) -> CredentialsRefused:
    """The token endpoint's 4xx (not 429): a fault of the deployment's settings, and which ones."""
    status = resp.status_code
    if status in (401, 403):
        fix = "CL_CLIENT_ID and CL_CLIENT_SECRET"
    elif status == 400:
        fix = "CL_CLIENT_ID, CL_CLIENT_SECRET and CL_SCOPE"
    else:
        fix = "CL_AUTH_URL (is it Commerce Layer's token endpoint, https://auth.commercelayer.io/oauth/token?)"
    return _refused(resp, "from the token endpoint", fix, by_api=False)


def _refused_api(resp: requests.Response, what: str) -> CredentialsRefused:
    """The API's 401 to a token the token endpoint had just issued."""
    fix = "CL_API_BASE (it must be the organization CL_CLIENT_ID belongs to) and CL_SCOPE"
    return _refused(resp, f"on {what} with a token just issued", fix, by_api=True)


def _refused(resp: requests.Response, where: str, fix: str, *, by_api: bool) -> CredentialsRefused:
    errors, details = _errors_of(resp)
    text = f"Commerce Layer refused the credentials (HTTP {resp.status_code} {where}: {details[:500]}): check {fix}"
    return CredentialsRefused(text, fix=fix, by_api=by_api, status=resp.status_code, errors=errors)


def _errors_of(resp: requests.Response) -> tuple[list[dict[str, object]], str]:
    """Commerce Layer's `errors[]` (title, detail, code, status, source) and their details in one
    text; an OAuth error answer (RFC 6749 5.2: `error`, `error_description`) is read as one error."""
    errors: list[dict[str, object]] = []
    try:
        doc = resp.json()
        if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
            errors = [
                {k: e.get(k) for k in ("title", "detail", "code", "status", "source") if k in e}
                for e in doc["errors"]
                if isinstance(e, dict)
            ]
        elif isinstance(doc, dict) and isinstance(doc.get("error"), str):
            errors = [{"code": doc["error"], "detail": str(doc.get("error_description") or doc["error"])}]
    except ValueError:
        pass
    details = "; ".join(str(e.get("detail") or e.get("title") or "") for e in errors if e) or resp.reason
    return errors, details


def _error_from(resp: requests.Response, what: str, *, uncertain: bool) -> CommerceLayerError:
    errors, details = _errors_of(resp)
    detail = f"{what}: HTTP {resp.status_code}: {details}"[:1000]
    status = resp.status_code
    if status == 429:
        return RetryableCommerceLayerError(
            detail,
            status=status,
            errors=errors,
            retry_after=parse_retry_after(resp.headers.get("Retry-After"), now=time.time()),
        )
    if status >= 500 or status == 423:
        # 423 Locked: the order is being changed by someone else; try again later.
        return RetryableCommerceLayerError(
            detail,
            status=status,
            errors=errors,
            uncertain=uncertain and status >= 500,
            retry_after=parse_retry_after(resp.headers.get("Retry-After"), now=time.time()),
        )
    return PermanentCommerceLayerError(detail, status=status, errors=errors)
