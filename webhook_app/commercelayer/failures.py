"""How Commerce Layer's answers and unanswered calls become CommerceLayerError (requests' types).

`unreachable` names the host and the setting to check when a call got no connection;
`error_from` maps an answer that is not a success (429, 423 and 5xx retryable, other 4xx
permanent, Commerce Layer's `errors[]` kept); `refused_token` and `refused_api` say which settings
to check when Commerce Layer refuses the credentials.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import requests

from webhook_app.errors import (
    CommerceLayerError,
    CredentialsRefused,
    PermanentCommerceLayerError,
    RetryableCommerceLayerError,
)
from webhook_app.ratelimit import RateLimiter

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


def unanswered(
    exc: requests.RequestException,
    what: str,
    url: str,
    variable: str,
    timeout: tuple[float, float],
    *,
    uncertain: bool,
) -> RetryableCommerceLayerError:
    """An API call that got no answer: `uncertain` (a write) unless no connection was made, when
    nothing was sent."""
    if isinstance(exc, requests.ReadTimeout):
        return RetryableCommerceLayerError(f"{what}: no answer within {timeout[1]} s", uncertain=uncertain)
    if isinstance(exc, requests.ConnectionError):
        return RetryableCommerceLayerError(
            f"{what}: {unreachable(url, variable, exc, timeout[0])}",
            uncertain=uncertain and not isinstance(exc, requests.ConnectTimeout),
        )
    return RetryableCommerceLayerError(f"{what}: {type(exc).__name__}", uncertain=uncertain)


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


def rate_limited_for(resp: requests.Response, *, now: float) -> float | None:
    """How long a 429 says to stop calling: its `Retry-After` if it has one (undocumented by
    Commerce Layer), else the refusing window's `x-ratelimit-interval` (documented: a sliding
    window has room again at the latest one interval later); None if it says neither."""
    wait = parse_retry_after(resp.headers.get("Retry-After"), now=now)
    if wait is not None:
        return wait
    try:
        interval = float(resp.headers.get("x-ratelimit-interval", ""))
    except ValueError:
        return None
    return interval if 0 < interval <= 3600 else None


def hold_for(limiter: RateLimiter, resp: requests.Response, *, clock: Callable[[], float]) -> float | None:
    """After a 429: no call through `limiter` starts for as long as the answer says; the seconds
    held, or None if it says nothing."""
    now = clock()
    wait = rate_limited_for(resp, now=now)
    if wait:
        limiter.hold(now + wait)
    return wait


def refused_token(resp: requests.Response) -> CredentialsRefused:
    """The token endpoint's 4xx (not 429): a fault of the deployment's settings, and which ones."""
    status = resp.status_code
    if status in (401, 403):
        fix = "CL_CLIENT_ID and CL_CLIENT_SECRET"
    elif status == 400:
        fix = "CL_CLIENT_ID, CL_CLIENT_SECRET and CL_SCOPE"
    else:
        fix = "CL_AUTH_URL (is it Commerce Layer's token endpoint, https://auth.commercelayer.io/oauth/token?)"
    return _refused(resp, "from the token endpoint", fix, by_api=False)


def refused_api(resp: requests.Response, what: str) -> CredentialsRefused:
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


def error_from(resp: requests.Response, what: str, *, uncertain: bool) -> CommerceLayerError:
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
