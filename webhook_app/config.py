"""Settings: every knob, read from the environment once, converted and checked.

`Settings.from_env(environ)` is called by the command line and by `create_app`, never at import.
A missing or malformed value raises ConfigError naming the variable (and never its value when the
variable holds a secret).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from webhook_app.errors import ConfigError
from webhook_app.signing import WebhookSecret, parse_secrets

T = TypeVar("T")

DEFAULT_DATABASE_URL = "sqlite:///webhook-app.db"
DEFAULT_AUTH_URL = "https://auth.commercelayer.io/oauth/token"
# Commerce Layer's documented limits for uncacheable calls in test mode (the stricter ones):
# 100 a minute overall and bursts of 25 per 10 s per endpoint. Live organizations get 200 / 50.
DEFAULT_RATE_LIMITS = "100/60,25/10"
DEFAULT_AUTH_RATE_LIMITS = "30/60"


def bundled_policy_path() -> Path:
    """The example policy shipped inside the package."""
    return Path(str(resources.files("webhook_app") / "policies" / "example.toml"))


@dataclass(frozen=True)
class RateLimit:
    """At most `count` calls in any window of `seconds`."""

    count: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}"


def parse_rate_limits(value: str) -> tuple[RateLimit, ...]:
    """`"100/60,25/10"` -> (RateLimit(100, 60), RateLimit(25, 10)); empty disables limiting."""
    out = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        m = re.fullmatch(r"(\d+)\s*/\s*(\d+(?:\.\d+)?)s?", part)
        if not m or int(m.group(1)) < 1 or float(m.group(2)) <= 0:
            raise ValueError(f"{part!r} is not COUNT/SECONDS")
        out.append(RateLimit(int(m.group(1)), float(m.group(2))))
    return tuple(out)


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told. Defaults are the embedded, safe configuration."""

    webhook_secrets: tuple[WebhookSecret, ...] = ()
    cl_client_id: str = ""
    cl_client_secret: str = field(default="", repr=False)
    cl_scope: str = ""
    cl_api_base: str = ""
    cl_auth_url: str = DEFAULT_AUTH_URL
    cl_connect_timeout: float = 3.05
    cl_read_timeout: float = 10.0
    cl_rate_limits: tuple[RateLimit, ...] = parse_rate_limits(DEFAULT_RATE_LIMITS)
    cl_auth_rate_limits: tuple[RateLimit, ...] = parse_rate_limits(DEFAULT_AUTH_RATE_LIMITS)
    cl_token_margin: float = 300.0
    database_url: str = DEFAULT_DATABASE_URL
    policy_path: Path = field(default_factory=bundled_policy_path)
    mode: str = "shadow"
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 64
    max_attempts: int = 10
    lease_seconds: float = 60.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 900.0
    poll_interval: float = 0.1
    db_timeout: float = 3.0
    web_workers: int = 2
    forwarded_hops: int = 0
    log_level: str = "INFO"
    replay_keys: tuple[str, ...] = field(default=(), repr=False)
    replay_token_ttl: float = 300.0
    admin_keys: tuple[str, ...] = field(default=(), repr=False)

    @property
    def has_credentials(self) -> bool:
        return bool(self.cl_client_id and self.cl_client_secret and self.cl_api_base)

    @property
    def shadow(self) -> bool:
        return self.mode == "shadow"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from `environ` (default: os.environ)."""
        env = os.environ if environ is None else environ
        r = _Reader(env)
        secrets: tuple[WebhookSecret, ...] = r.get("CL_WEBHOOK_SECRETS", parse_secrets, (), secret=True)
        client_id = r.get("CL_CLIENT_ID", str, "")
        client_secret = r.get("CL_CLIENT_SECRET", str, "", secret=True)
        api_base = r.get("CL_API_BASE", _url, "")
        has_creds = bool(client_id and client_secret and api_base)
        mode = r.get("WEBHOOK_APP_MODE", _choice("enforce", "shadow"), "enforce" if has_creds else "shadow")
        if mode == "enforce" and not has_creds:
            missing = [n for n, v in (("CL_CLIENT_ID", client_id), ("CL_CLIENT_SECRET", client_secret),
                                      ("CL_API_BASE", api_base)) if not v]
            raise ConfigError("WEBHOOK_APP_MODE", f"enforce needs {', '.join(missing)} to be set")
        settings = cls(
            webhook_secrets=secrets,
            cl_client_id=client_id,
            cl_client_secret=client_secret,
            cl_scope=r.get("CL_SCOPE", str, ""),
            cl_api_base=api_base,
            cl_auth_url=r.get("CL_AUTH_URL", _url, DEFAULT_AUTH_URL),
            cl_connect_timeout=r.get("CL_CONNECT_TIMEOUT", _positive(float), 3.05),
            cl_read_timeout=r.get("CL_READ_TIMEOUT", _positive(float), 10.0),
            cl_rate_limits=r.get("CL_RATE_LIMITS", parse_rate_limits, parse_rate_limits(DEFAULT_RATE_LIMITS)),
            cl_auth_rate_limits=r.get("CL_AUTH_RATE_LIMITS", parse_rate_limits,
                                      parse_rate_limits(DEFAULT_AUTH_RATE_LIMITS)),
            cl_token_margin=r.get("CL_TOKEN_REFRESH_MARGIN", _non_negative(float), 300.0),
            database_url=r.get("WEBHOOK_APP_DATABASE_URL", _database_url, DEFAULT_DATABASE_URL, secret=True),
            policy_path=r.get("WEBHOOK_APP_POLICY", _existing_file, bundled_policy_path()),
            mode=mode,
            max_body_bytes=r.get("WEBHOOK_APP_MAX_BODY_BYTES", _positive(int), 1024 * 1024),
            max_json_depth=r.get("WEBHOOK_APP_MAX_JSON_DEPTH", _positive(int), 64),
            max_attempts=r.get("WEBHOOK_APP_MAX_ATTEMPTS", _positive(int), 10),
            lease_seconds=r.get("WEBHOOK_APP_LEASE_SECONDS", _positive(float), 60.0),
            retry_base_seconds=r.get("WEBHOOK_APP_RETRY_BASE_SECONDS", _positive(float), 2.0),
            retry_max_seconds=r.get("WEBHOOK_APP_RETRY_MAX_SECONDS", _positive(float), 900.0),
            poll_interval=r.get("WEBHOOK_APP_POLL_INTERVAL", _positive(float), 0.1),
            db_timeout=r.get("WEBHOOK_APP_DB_TIMEOUT", _positive(float), 3.0),
            web_workers=r.get("WEBHOOK_APP_WEB_WORKERS", _positive(int), 2),
            forwarded_hops=r.get("WEBHOOK_APP_FORWARDED_HOPS", _non_negative(int), 0),
            log_level=r.get("WEBHOOK_APP_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
            replay_keys=r.get("WEBHOOK_APP_REPLAY_KEYS", _key_list, (), secret=True),
            replay_token_ttl=r.get("WEBHOOK_APP_REPLAY_TOKEN_TTL", _positive(float), 300.0),
            admin_keys=r.get("WEBHOOK_APP_ADMIN_KEYS", _key_list, (), secret=True),
        )
        if settings.lease_seconds <= settings.cl_connect_timeout + settings.cl_read_timeout:
            # A lease must outlive one call, or a second worker could take a job whose PATCH is
            # still in flight.
            raise ConfigError("WEBHOOK_APP_LEASE_SECONDS",
                              "must be longer than CL_CONNECT_TIMEOUT + CL_READ_TIMEOUT")
        if settings.retry_max_seconds < settings.retry_base_seconds:
            raise ConfigError("WEBHOOK_APP_RETRY_MAX_SECONDS", "must be at least WEBHOOK_APP_RETRY_BASE_SECONDS")
        return settings


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name: str, convert: Callable[[str], T], default: T, *, secret: bool = False) -> T:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return convert(raw.strip())
        except (ValueError, TypeError) as exc:
            # For secret-bearing variables the converter's message never includes the value.
            detail = str(exc) if secret else f"{exc} (got {raw.strip()[:80]!r})"
            raise ConfigError(name, detail) from None


def _number(kind: Callable[[str], Any], value: str, bound: str) -> Any:
    """`kind(value)`, or a ValueError saying what is expected (not Python's "invalid literal")."""
    try:
        v = kind(value)
    except ValueError:
        v = None
    if v is None or v != v or v in (float("inf"), float("-inf")):  # NaN and infinities included
        raise ValueError(f"must be {'a whole number' if kind is int else 'a number'} {bound}")
    return v


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        v = _number(kind, value, "greater than zero")
        if v <= 0:
            raise ValueError("must be greater than zero")
        return v

    return convert


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        v = _number(kind, value, "of zero or more")
        if v < 0:
            raise ValueError("must not be negative")
        return v

    return convert


def _choice(*allowed: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        v = value if value in allowed else value.lower() if value.lower() in allowed else value.upper()
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return v

    return convert


def _url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


def _database_url(value: str) -> str:
    if not (value.startswith("sqlite:///") or value.startswith(("postgresql://", "postgres://"))):
        raise ValueError("must start with sqlite:/// or postgresql://")
    return value


def _existing_file(value: str) -> Path:
    p = Path(value).expanduser()
    if not p.is_file():
        raise ValueError("no such file")
    return p


def _key_list(value: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in value.split(","))
    if any(len(k) < 16 for k in keys):
        raise ValueError("each key must be at least 16 characters")
    return keys
