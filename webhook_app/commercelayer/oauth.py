"""OAuth2 client credentials for Commerce Layer: the access token every API call carries.

`TokenSource.access_token()` returns the cached token, or asks the token endpoint for one (under
the cache's lock, so that concurrent callers make one request) and caches it until `token_margin`
seconds (at most half its life) before it expires. A 4xx from the token endpoint (not 429) is
CredentialsRefused naming the settings to check; everything else that fails is retryable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from webhook_app.commercelayer.failures import error_from, hold_for, refused_token, unreachable
from webhook_app.errors import RetryableCommerceLayerError
from webhook_app.ratelimit import RateLimiter, wait_for_slot


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


#: what a token request reports: (method, route, status or None, seconds, seconds waited for the limit)
Recorder = Callable[[str, str, int | None, float, float], None]


class TokenSource:
    """The client credentials grant against `auth_url`, through `limiter`, its tokens in `cache`."""

    def __init__(
        self,
        *,
        auth_url: str,
        client_id: str,
        client_secret: str,
        scope: str,
        token_margin: float,
        timeout: tuple[float, float],
        limiter: RateLimiter,
        cache: TokenCache,
        session: requests.Session,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        record: Recorder,
    ) -> None:
        self.auth_url = auth_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self.token_margin = token_margin
        self.timeout = timeout
        self.limiter = limiter
        self.cache = cache
        self.session = session
        self.clock = clock
        self.sleep = sleep
        self.record = record

    def __repr__(self) -> str:  # never show the secret
        return f"TokenSource(auth_url={self.auth_url!r}, client_id={self.client_id!r})"

    def access_token(self) -> str:
        token = self.cache.get(self.clock())
        if token:
            return token
        with self.cache.lock:
            token = self.cache.get(self.clock())
            if token:
                return token
            return self._fetch()

    def renew(self) -> str:
        """A new token now, even with one cached (it replaces it)."""
        with self.cache.lock:
            return self._fetch()

    def invalidate(self, token: str) -> None:
        """`token` was refused: the next call asks for a new one."""
        self.cache.invalidate(token)

    def _fetch(self) -> str:
        body = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._client_secret}
        if self.scope:
            body["scope"] = self.scope
        waited = wait_for_slot(self.limiter, clock=self.clock, sleep=self.sleep)
        started = time.monotonic()
        status = None
        try:
            resp = self.session.post(
                self.auth_url, json=body, timeout=self.timeout, headers={"Accept": "application/json"}
            )
            status = resp.status_code
        except requests.ConnectionError as exc:  # a connect timeout included
            raise RetryableCommerceLayerError(
                f"token request: {unreachable(self.auth_url, 'CL_AUTH_URL', exc, self.timeout[0])}"
            ) from exc
        except requests.Timeout as exc:
            raise RetryableCommerceLayerError("token request timed out") from exc
        except requests.RequestException as exc:
            raise RetryableCommerceLayerError(f"token request failed: {type(exc).__name__}") from exc
        finally:
            self.record("POST", "token", status, time.monotonic() - started, waited)
        if resp.status_code == 429:
            hold_for(self.limiter, resp, clock=self.clock)
        if 400 <= resp.status_code < 500 and resp.status_code != 429:
            raise refused_token(resp)
        if resp.status_code != 200:
            raise error_from(resp, "token request", uncertain=False)
        try:
            data = resp.json()
            value = str(data["access_token"])
            expires_in = float(data.get("expires_in", 7200))
        except (ValueError, KeyError, TypeError) as exc:
            raise RetryableCommerceLayerError("token answer is not the expected JSON") from exc
        margin = min(self.token_margin, expires_in / 2)
        self.cache.put(value, self.clock() + expires_in - margin)
        return value
