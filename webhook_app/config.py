"""Settings: every knob, read from the environment once, converted and checked.

`Settings.from_env(environ)` is called by the command line and by `create_app`, never at import.
A missing or malformed value raises ConfigError naming the variable (and never its value when the
variable holds a secret).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from webhook_app.errors import ConfigError
from webhook_app.signing import MIN_SECRET_LENGTH, WebhookSecret, parse_secrets
from webhook_app.topics import KNOWN_TOPICS, TOPIC_PATTERN

T = TypeVar("T")

#: where `serve` and `web` listen without --bind (the operator routes: the next port up)
DEFAULT_BIND = "127.0.0.1:8000"


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


def parse_topics(value: str) -> tuple[str, ...]:
    """`WEBHOOK_APP_TOPICS`: comma-separated topics like `shipments.ship`, added to KNOWN_TOPICS."""
    out = tuple(t.strip() for t in value.split(",") if t.strip())
    bad = [t for t in out if not TOPIC_PATTERN.match(t)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a topic like `orders.place`")
    return out


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
            # The converter says what is expected; the value is shown once, and never for a
            # variable that holds a secret.
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
    expected = f"must be a {'whole number' if kind is int else 'number'} greater than zero"

    def convert(value: str) -> Any:
        v = _number(kind, value, "greater than zero")
        if v <= 0:
            raise ValueError(expected)
        return v

    return convert


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    expected = f"must be a {'whole number' if kind is int else 'number'} of zero or more"

    def convert(value: str) -> Any:
        v = _number(kind, value, "of zero or more")
        if v < 0:
            raise ValueError(expected)
        return v

    return convert


def _choice(*allowed: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        v = value if value in allowed else value.lower() if value.lower() in allowed else value.upper()
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return v

    return convert


def _bool(value: str) -> bool:
    v = value.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be on or off (1/0, true/false, yes/no)")


def _url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


def _database_url(value: str) -> str:
    if not (value.startswith("sqlite:///") or value.startswith(("postgresql://", "postgres://"))):
        raise ValueError("must start with sqlite:/// or postgresql://")
    if value.startswith("sqlite:///") and not value.removeprefix("sqlite:///").strip():
        raise ValueError("sqlite:/// needs a file path after it, e.g. sqlite:///webhook-app.db")
    if value.startswith(("postgresql://", "postgres://")):
        try:
            urlsplit(value).port  # noqa: B018 - parsing it is the check
        except ValueError:
            # (never the value: the URL may hold a password)
            raise ValueError("the port in the URL must be a number from 0 to 65535") from None
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


def _field_names(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", n) for n in names):
        raise ValueError("must be attribute names separated by commas")
    return names


def _operator_bind(value: str) -> str:
    """`off`, `public` or HOST:PORT (a port from 0 to 65535)."""
    if value.lower() in ("off", "public"):
        return value.lower()
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be HOST:PORT (a port from 0 to 65535), off or public")
    return value


def _setting(
    env: str,
    convert: Callable[[str], Any],
    default: Any = None,
    *,
    secret: bool = False,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A Settings field read from `env` with `convert`; its default is written here and only here."""
    meta = {"env": env, "convert": convert, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told. Defaults are the embedded, safe configuration."""

    webhook_secrets: tuple[WebhookSecret, ...] = _setting("CL_WEBHOOK_SECRETS", parse_secrets, (), secret=True)
    cl_client_id: str = _setting("CL_CLIENT_ID", str, "")
    cl_client_secret: str = _setting("CL_CLIENT_SECRET", str, "", secret=True)
    cl_scope: str = _setting("CL_SCOPE", str, "")
    cl_api_base: str = _setting("CL_API_BASE", _url, "")
    cl_auth_url: str = _setting("CL_AUTH_URL", _url, "https://auth.commercelayer.io/oauth/token")
    cl_connect_timeout: float = _setting("CL_CONNECT_TIMEOUT", _positive(float), 3.05)
    cl_read_timeout: float = _setting("CL_READ_TIMEOUT", _positive(float), 10.0)
    # Commerce Layer's documented limits for uncacheable calls in test mode (the stricter ones):
    # 100 a minute overall and bursts of 25 per 10 s per endpoint. Live organizations get 200 / 50.
    cl_rate_limits: tuple[RateLimit, ...] = _setting(
        "CL_RATE_LIMITS", parse_rate_limits, parse_rate_limits("100/60,25/10")
    )
    cl_auth_rate_limits: tuple[RateLimit, ...] = _setting(
        "CL_AUTH_RATE_LIMITS", parse_rate_limits, parse_rate_limits("30/60")
    )
    cl_token_margin: float = _setting("CL_TOKEN_REFRESH_MARGIN", _non_negative(float), 300.0)
    database_url: str = _setting("WEBHOOK_APP_DATABASE_URL", _database_url, "sqlite:///webhook-app.db", secret=True)
    policy_path: Path = _setting("WEBHOOK_APP_POLICY", _existing_file, factory=bundled_policy_path)
    # The default depends on the credentials (enforce with them, shadow without): see from_env.
    mode: str = _setting("WEBHOOK_APP_MODE", _choice("enforce", "shadow"), "shadow")
    max_body_bytes: int = _setting("WEBHOOK_APP_MAX_BODY_BYTES", _positive(int), 1024 * 1024)
    max_json_depth: int = _setting("WEBHOOK_APP_MAX_JSON_DEPTH", _positive(int), 64)
    max_attempts: int = _setting("WEBHOOK_APP_MAX_ATTEMPTS", _positive(int), 10)
    lease_seconds: float = _setting("WEBHOOK_APP_LEASE_SECONDS", _positive(float), 60.0)
    retry_base_seconds: float = _setting("WEBHOOK_APP_RETRY_BASE_SECONDS", _positive(float), 2.0)
    retry_max_seconds: float = _setting("WEBHOOK_APP_RETRY_MAX_SECONDS", _positive(float), 900.0)
    poll_interval: float = _setting("WEBHOOK_APP_POLL_INTERVAL", _positive(float), 0.1)
    db_timeout: float = _setting("WEBHOOK_APP_DB_TIMEOUT", _positive(float), 3.0)
    web_workers: int = _setting("WEBHOOK_APP_WEB_WORKERS", _positive(int), 4)
    group_commit: bool = _setting("WEBHOOK_APP_GROUP_COMMIT", _bool, True)
    forwarded_hops: int = _setting("WEBHOOK_APP_FORWARDED_HOPS", _non_negative(int), 0)
    # `serve` only: its front (webhook_app/front.py) and where the operator routes answer.
    operator_bind: str = _setting("WEBHOOK_APP_OPERATOR_BIND", _operator_bind, "")
    front_hold_seconds: float = _setting("WEBHOOK_APP_FRONT_HOLD_SECONDS", _positive(float), 3.0)
    front_max_connections: int = _setting("WEBHOOK_APP_FRONT_MAX_CONNECTIONS", _non_negative(int), 0)
    front_client_connections: int = _setting("WEBHOOK_APP_FRONT_CLIENT_CONNECTIONS", _positive(int), 64)
    front_buffer_bytes: int = _setting("WEBHOOK_APP_FRONT_BUFFER_BYTES", _positive(int), 64 * 1024 * 1024)
    log_level: str = _setting("WEBHOOK_APP_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO")
    replay_keys: tuple[str, ...] = _setting("WEBHOOK_APP_REPLAY_KEYS", _key_list, (), secret=True)
    replay_token_ttl: float = _setting("WEBHOOK_APP_REPLAY_TOKEN_TTL", _positive(float), 300.0)
    admin_keys: tuple[str, ...] = _setting("WEBHOOK_APP_ADMIN_KEYS", _key_list, (), secret=True)
    # The circuit guard (ops/circuit.py): one `GET /api/webhooks` per interval, through the client's
    # rate limit; 0 turns it off.
    circuit_check_interval: float = _setting("WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL", _non_negative(float), 60.0)
    circuit_warn_failures: int = _setting("WEBHOOK_APP_CIRCUIT_WARN_FAILURES", _positive(int), 5)
    circuit_auto_reset: bool = _setting("WEBHOOK_APP_CIRCUIT_AUTO_RESET", _bool, False)
    circuit_health_url: str = _setting("WEBHOOK_APP_CIRCUIT_HEALTH_URL", _url, "")
    circuit_backfill_margin: float = _setting("WEBHOOK_APP_CIRCUIT_BACKFILL_MARGIN", _non_negative(float), 300.0)
    extra_topics: tuple[str, ...] = _setting("WEBHOOK_APP_TOPICS", parse_topics, ())
    # Retention: bodies and headers (names, emails, addresses) go first; the record of what was
    # received and decided later. Per-order action claims are kept: a flagged order stays flagged.
    retain_bodies_days: float = _setting("WEBHOOK_APP_RETAIN_BODIES_DAYS", _positive(float), 30.0)
    retain_records_days: float = _setting("WEBHOOK_APP_RETAIN_RECORDS_DAYS", _positive(float), 180.0)
    prune_interval: float = _setting("WEBHOOK_APP_PRUNE_INTERVAL", _positive(float), 300.0)
    prune_batch: int = _setting("WEBHOOK_APP_PRUNE_BATCH", _positive(int), 100)
    # Optional: attribute names (e.g. customer_email,first_name,last_name,line_1,phone) whose values
    # are replaced in stored bodies once a delivery is settled and REDACT_AFTER_DAYS old.
    redact_fields: tuple[str, ...] = _setting("WEBHOOK_APP_REDACT_FIELDS", _field_names, ())
    redact_after_days: float = _setting("WEBHOOK_APP_REDACT_AFTER_DAYS", _positive(float), 7.0)
    # Honour Commerce Layer's `customers.anonymization_completed` by erasing the customer's stored
    # bodies and headers (ops/anonymization.py), in enforce and shadow mode alike; off: recorded
    # as not honoured, nothing erased (`webhook-app forget` by hand).
    honour_anonymization: bool = _setting("WEBHOOK_APP_HONOUR_ANONYMIZATION", _bool, True)
    # The longest the policy may take to decide one job (the worker's main thread only): a job over
    # it is failed like any other error, retried, then dead-lettered; the worker goes on.
    decide_budget: float = _setting("WEBHOOK_APP_DECIDE_BUDGET_SECONDS", _positive(float), 5.0)

    @property
    def has_credentials(self) -> bool:
        return bool(self.cl_client_id and self.cl_client_secret and self.cl_api_base)

    @property
    def accepted_topics(self) -> frozenset[str]:
        """The topics the intake stores: Commerce Layer's known ones and WEBHOOK_APP_TOPICS."""
        return KNOWN_TOPICS | frozenset(self.extra_topics)

    @property
    def shadow(self) -> bool:
        return self.mode == "shadow"

    def not_ready_reasons(self) -> list[str]:
        """Why the intake could store nothing with these settings (for `/readyz` and the start
        banner); empty when it can. A secret that is set but unusable never gets here: `from_env`
        refuses it (the service does not start)."""
        if not self.webhook_secrets:
            return [
                "no webhook secret configured: set CL_WEBHOOK_SECRETS to each Commerce Layer webhook's"
                f" shared secret (label:secret, at least {MIN_SECRET_LENGTH} characters); until then every delivery is"
                " refused with 401"
            ]
        return []

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Environment variable -> field name, for every setting."""
        return {f.metadata["env"]: f.name for f in fields(cls)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from `environ` (default: os.environ)."""
        env = os.environ if environ is None else environ
        r = _Reader(env)
        defaults = cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "mode":
                continue
            values[f.name] = r.get(
                f.metadata["env"], f.metadata["convert"], getattr(defaults, f.name), secret=f.metadata["secret"]
            )
        has_creds = bool(values["cl_client_id"] and values["cl_client_secret"] and values["cl_api_base"])
        mode_field = next(f for f in fields(cls) if f.name == "mode")
        values["mode"] = r.get("WEBHOOK_APP_MODE", mode_field.metadata["convert"], "enforce" if has_creds else "shadow")
        if values["mode"] == "enforce" and not has_creds:
            missing = [
                n
                for n, k in (
                    ("CL_CLIENT_ID", "cl_client_id"),
                    ("CL_CLIENT_SECRET", "cl_client_secret"),
                    ("CL_API_BASE", "cl_api_base"),
                )
                if not values[k]
            ]
            raise ConfigError("WEBHOOK_APP_MODE", f"enforce needs {', '.join(missing)} to be set")
        settings = cls(**values)
        if settings.lease_seconds <= settings.cl_connect_timeout + settings.cl_read_timeout:
            # A lease must outlive one call, or a second worker could take a job whose PATCH is
            # still in flight.
            raise ConfigError("WEBHOOK_APP_LEASE_SECONDS", "must be longer than CL_CONNECT_TIMEOUT + CL_READ_TIMEOUT")
        if 0 < settings.circuit_check_interval < 1:
            # One list call per check (more with many webhooks): faster would eat the rate limit.
            raise ConfigError("WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL", "must be 0 (off) or at least 1 second")
        if settings.retain_records_days < settings.retain_bodies_days:
            raise ConfigError("WEBHOOK_APP_RETAIN_RECORDS_DAYS", "must be at least WEBHOOK_APP_RETAIN_BODIES_DAYS")
        if settings.front_buffer_bytes < settings.max_body_bytes:
            raise ConfigError("WEBHOOK_APP_FRONT_BUFFER_BYTES", "must be at least WEBHOOK_APP_MAX_BODY_BYTES")
        if settings.retry_max_seconds < settings.retry_base_seconds:
            raise ConfigError("WEBHOOK_APP_RETRY_MAX_SECONDS", "must be at least WEBHOOK_APP_RETRY_BASE_SECONDS")
        return settings
