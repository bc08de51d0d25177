"""Settings: every knob, read from the environment once, converted and checked.

`Settings.from_env(environ)` is called by the command line and by `create_app`, never at import.
A missing or malformed value raises ConfigError naming the variable (and never its value when the
variable holds a secret).

The fields are declared in groups, one frozen dataclass per concern (`_Intake`, `_CommerceLayer`,
`_Decision`, `_Jobs`, `_Processes`, `_OperatorKeys`, `_CircuitGuard`, `_Retention`); `Settings`
is all of them together, and checks them against each other in `__post_init__`. The
configuration reference (docs/gen_reference.py) lists them in that order.
"""

from __future__ import annotations

import difflib
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
from webhook_app.sources import Network, Sources, parse_allowed_sources, parse_trusted_proxies
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
    return _bounded(kind, lambda v: v > 0, "greater than zero")


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    return _bounded(kind, lambda v: v >= 0, "of zero or more")


def _bounded(kind: Callable[[str], Any], within: Callable[[Any], bool], bound: str) -> Callable[[str], Any]:
    """A converter to `kind` that refuses a value outside `within`, saying it "must be a number `bound`"."""

    def convert(value: str) -> Any:
        v = _number(kind, value, bound)
        if not within(v):
            raise ValueError(f"must be a {'whole number' if kind is int else 'number'} {bound}")
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
    doc: str = "",
    default_doc: str = "",
) -> Any:
    """A Settings field read from `env` with `convert`; its default is written here and only here.

    `doc` says what the setting does and `default_doc` what the default means when its value alone
    does not say it (e.g. "none: every delivery is refused"); docs/gen_reference.py writes the
    configuration reference from them."""
    meta = {"env": env, "convert": convert, "secret": secret, "doc": doc, "default_doc": default_doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class _Intake:
    """The intake: who may deliver, what it accepts and how much."""

    webhook_secrets: tuple[WebhookSecret, ...] = _setting(
        "CL_WEBHOOK_SECRETS",
        parse_secrets,
        (),
        secret=True,
        doc="comma-separated webhook shared secrets, each `label:secret` or a bare `secret` (labelled "
        "`secret-N`). All are tried (rotation; several webhooks on one endpoint); the matching label is "
        "recorded, never the secret. Each secret must be at least 16 characters, and `label:` with "
        "nothing after it (a template with an unset variable) is refused: the service does not start "
        "(exit 2).",
        default_doc="none: every delivery is refused with 401, and the service is not ready",
    )
    max_body_bytes: int = _setting(
        "WEBHOOK_APP_MAX_BODY_BYTES",
        _positive(int),
        1024 * 1024,
        doc="body limit (413 above it)",
    )
    max_json_depth: int = _setting(
        "WEBHOOK_APP_MAX_JSON_DEPTH",
        _positive(int),
        64,
        doc="deepest JSON nesting accepted (400 above it)",
    )
    extra_topics: tuple[str, ...] = _setting(
        "WEBHOOK_APP_TOPICS",
        parse_topics,
        (),
        doc="comma-separated topics accepted beyond Commerce Layer's known ones (the 187 in "
        "`webhook_app/data/topics.json`: see *Topics* under the intake); any other topic is refused with "
        "400 before anything is stored. Commerce Layer signs only the body, so without this list one "
        "captured delivery could be stored again under every invented topic. Non-order topics are stored "
        "as `ignored`, except the four `customers.anonymization_*` (queued for the worker).",
        default_doc="none: only the known topics",
    )
    forwarded_hops: int = _setting(
        "WEBHOOK_APP_FORWARDED_HOPS",
        _non_negative(int),
        0,
        doc="how many proxies' `X-Forwarded-*` headers to trust",
    )
    allowed_sources: tuple[Network, ...] = _setting(
        "WEBHOOK_APP_ALLOWED_SOURCES",
        parse_allowed_sources,
        (),
        doc="comma-separated sources allowed to deliver to the intake: `commercelayer` (Commerce Layer's six "
        "published webhook addresses), `commercelayer-eu`, `commercelayer-us` (three each), and addresses or "
        "CIDRs, IPv4 or IPv6 (`203.0.113.0/24`, `2001:db8::/32`). Any other source is answered 403 before the "
        "body is read. An unknown name or a bad CIDR stops the service at start (exit 2). See *Only Commerce "
        "Layer let in*",
        default_doc="none: every source may deliver",
    )
    trusted_proxies: tuple[Network, ...] = _setting(
        "WEBHOOK_APP_TRUSTED_PROXIES",
        parse_trusted_proxies,
        (),
        doc="addresses or CIDRs of the proxies in front of the service whose `X-Forwarded-For` names the source "
        "(walked from the right, stopping at the first address that is not one of them). Needs "
        "`WEBHOOK_APP_ALLOWED_SOURCES`; with `WEBHOOK_APP_FORWARDED_HOPS` > 0 and an allowlist it must be set",
        default_doc="none: the connection's peer is the source",
    )

    @property
    def accepted_topics(self) -> frozenset[str]:
        """The topics the intake stores: Commerce Layer's known ones and WEBHOOK_APP_TOPICS."""
        return KNOWN_TOPICS | frozenset(self.extra_topics)

    @property
    def sources(self) -> Sources:
        """Who may deliver: WEBHOOK_APP_ALLOWED_SOURCES through WEBHOOK_APP_TRUSTED_PROXIES."""
        return Sources(self.allowed_sources, self.trusted_proxies)


@dataclass(frozen=True)
class _CommerceLayer:
    """Commerce Layer: the organization's credentials and API, and how the client calls it."""

    cl_client_id: str = _setting(
        "CL_CLIENT_ID",
        str,
        "",
        doc="Commerce Layer integration client id",
        default_doc="none",
    )
    cl_client_secret: str = _setting(
        "CL_CLIENT_SECRET",
        str,
        "",
        secret=True,
        doc="its client secret",
        default_doc="none",
    )
    cl_scope: str = _setting(
        "CL_SCOPE",
        str,
        "",
        doc="OAuth scope, e.g. `market:code:eu`",
        default_doc="empty: none sent",
    )
    cl_api_base: str = _setting(
        "CL_API_BASE",
        _url,
        "",
        doc="your organization's base URL, e.g. `https://yourdomain.commercelayer.io`",
        default_doc="none",
    )
    cl_auth_url: str = _setting(
        "CL_AUTH_URL",
        _url,
        "https://auth.commercelayer.io/oauth/token",
        doc="token endpoint",
    )
    cl_connect_timeout: float = _setting(
        "CL_CONNECT_TIMEOUT",
        _positive(float),
        3.05,
        doc="seconds to connect to Commerce Layer",
    )
    cl_read_timeout: float = _setting(
        "CL_READ_TIMEOUT",
        _positive(float),
        10.0,
        doc="seconds to wait for an answer",
    )
    # Commerce Layer's documented limits for uncacheable calls in test mode (the stricter ones):
    # 100 a minute overall and bursts of 25 per 10 s per endpoint. Live organizations get 200 / 50.
    cl_rate_limits: tuple[RateLimit, ...] = _setting(
        "CL_RATE_LIMITS",
        parse_rate_limits,
        parse_rate_limits("100/60,25/10"),
        doc="client-side limits on API calls, `COUNT/SECONDS` windows all applied to every call (Commerce "
        "Layer's test-mode limits; live organizations may use `200/60,50/10`)",
    )
    cl_auth_rate_limits: tuple[RateLimit, ...] = _setting(
        "CL_AUTH_RATE_LIMITS",
        parse_rate_limits,
        parse_rate_limits("30/60"),
        doc="limits on token requests",
    )
    cl_token_margin: float = _setting(
        "CL_TOKEN_REFRESH_MARGIN",
        _non_negative(float),
        300.0,
        doc="renew the token this many seconds before `expires_in` (at most half its life)",
    )
    organizations_path: Path | None = _setting(
        "WEBHOOK_APP_ORGANIZATIONS",
        _existing_file,
        None,
        doc="agency mode: a TOML file listing the organizations served, one table per slug (see *Agency mode*)",
        default_doc="unset (one organization, from `CL_*`)",
    )

    @property
    def has_credentials(self) -> bool:
        return bool(self.cl_client_id and self.cl_client_secret and self.cl_api_base)


@dataclass(frozen=True)
class _Decision:
    """The decision: the policy, whether to act on it, and how long deciding may take."""

    policy_path: Path = _setting(
        "WEBHOOK_APP_POLICY",
        _existing_file,
        factory=bundled_policy_path,
        doc="the policy file",
        default_doc="the bundled `webhook_app/policies/example.toml`",
    )
    # The default depends on the credentials (enforce with them, shadow without): see from_env.
    mode: str = _setting(
        "WEBHOOK_APP_MODE",
        _choice("enforce", "shadow"),
        "shadow",
        doc="`enforce` calls Commerce Layer; `shadow` decides and records only",
        default_doc="`enforce` if `CL_CLIENT_ID`, `CL_CLIENT_SECRET` and `CL_API_BASE` are set, else `shadow`",
    )
    # The longest the policy may take to decide one job (the worker's main thread only): a job over
    # it is failed like any other error, retried, then dead-lettered; the worker goes on.
    decide_budget: float = _setting(
        "WEBHOOK_APP_DECIDE_BUDGET_SECONDS",
        _positive(float),
        5.0,
        doc="the longest the policy may take to decide one job in the worker; past it the job fails like any "
        "error (retried, then dead-lettered) and the worker goes on",
    )

    @property
    def shadow(self) -> bool:
        return self.mode == "shadow"


@dataclass(frozen=True)
class _Jobs:
    """The database and the job queue: where deliveries are kept, how jobs are leased and retried."""

    database_url: str = _setting(
        "WEBHOOK_APP_DATABASE_URL",
        _database_url,
        "sqlite:///webhook-app.db",
        secret=True,
        doc="`sqlite:///relative/or//absolute/path`, or `postgresql://user:password@host:5432/db` (needs `pip"
        " install '.[postgres]'`)",
    )
    db_timeout: float = _setting(
        "WEBHOOK_APP_DB_TIMEOUT",
        _positive(float),
        3.0,
        doc="seconds a request waits for the database (SQLite lock, PostgreSQL pool/connect) before answering"
        " 503; keep it under Commerce Layer's 5 s",
    )
    max_attempts: int = _setting(
        "WEBHOOK_APP_MAX_ATTEMPTS",
        _positive(int),
        10,
        doc="attempts per job before it is dead-lettered",
    )
    lease_seconds: float = _setting(
        "WEBHOOK_APP_LEASE_SECONDS",
        _positive(float),
        60.0,
        doc="how long a worker owns a job before another may take it (must exceed `CL_CONNECT_TIMEOUT + "
        "CL_READ_TIMEOUT`)",
    )
    retry_base_seconds: float = _setting(
        "WEBHOOK_APP_RETRY_BASE_SECONDS",
        _positive(float),
        2.0,
        doc="first retry delay (doubles each attempt, half of it random)",
    )
    retry_max_seconds: float = _setting(
        "WEBHOOK_APP_RETRY_MAX_SECONDS",
        _positive(float),
        900.0,
        doc="longest retry delay",
    )
    poll_interval: float = _setting(
        "WEBHOOK_APP_POLL_INTERVAL",
        _positive(float),
        0.1,
        doc="the longest an idle worker waits before looking for jobs again: a committed job wakes it at once"
        " (PostgreSQL `LISTEN`/`NOTIFY`; on SQLite a datagram from the web processes on the same host, "
        "`webhook_app/wakeup.py`), so this is only the fallback",
    )


@dataclass(frozen=True)
class _Processes:
    """The processes: gunicorn's workers and commits, `serve`'s front and operator address, logging."""

    web_workers: int = _setting(
        "WEBHOOK_APP_WEB_WORKERS",
        _positive(int),
        4,
        doc="gunicorn worker processes (`--workers` overrides). With group commit a worker waits for the "
        "writer without using the CPU, so more workers than cores keep the CPU busy and let commits share"
        " a flush: 4 took 18% more deliveries a second than 2 on a 2-core VM (BENCHMARKS.md)",
    )
    group_commit: bool = _setting(
        "WEBHOOK_APP_GROUP_COMMIT",
        _bool,
        True,
        doc="`web` starts a commit writer of its own that stores the deliveries of all its workers in shared "
        "transactions, one flush to disk for several (see *Group commit*); `false`: each worker commits "
        "its own",
    )
    # `serve` only: its front (webhook_app/front.py, in each gunicorn worker) and where the operator routes answer.
    operator_bind: str = _setting(
        "WEBHOOK_APP_OPERATOR_BIND",
        _operator_bind,
        "",
        doc="`serve` only: `HOST:PORT` where `/readyz`, `/metrics` and `/admin` answer (with every other "
        "route); the public `--bind` serves only the intake and `/healthz` (404 for the rest). `public`: "
        "everything on the public address; `off`: operator routes nowhere. An address that cannot be "
        "bound stops `serve` (exit 2)",
        default_doc="127.0.0.1, `serve`'s public port + 1: `127.0.0.1:8001`",
    )
    front_hold_seconds: float = _setting(
        "WEBHOOK_APP_FRONT_HOLD_SECONDS",
        _positive(float),
        3.0,
        doc="no longer used (accepted so that a configuration that sets it still starts): `serve`'s front runs "
        "in gunicorn's workers, and a connection made while gunicorn (re)starts waits in the listening "
        "socket's backlog",
    )
    front_max_connections: int = _setting(
        "WEBHOOK_APP_FRONT_MAX_CONNECTIONS",
        _non_negative(int),
        0,
        doc="`serve` only: client connections the front keeps at once, shared equally by gunicorn's workers; "
        "it is never set above what the descriptor limit allows. Beyond it: 503 and close",
        default_doc="`0`: as many as the file-descriptor limit allows: `ulimit -n` − 64, at most 8192",
    )
    front_client_connections: int = _setting(
        "WEBHOOK_APP_FRONT_CLIENT_CONNECTIONS",
        _positive(int),
        64,
        doc="`serve` only: connections one client address (an IPv6 client: its /64) may keep open at once in "
        "each gunicorn worker (503 and close beyond it; up to workers times this in all). "
        "Behind a proxy on the same host every client is that proxy: raise it, or let the proxy limit",
    )
    front_buffer_bytes: int = _setting(
        "WEBHOOK_APP_FRONT_BUFFER_BYTES",
        _positive(int),
        64 * 1024 * 1024,
        doc="`serve` only: the bytes the front holds for unfinished requests (heads, declared and chunked "
        "bodies), all clients together, shared equally by gunicorn's workers; one client gets at most a "
        "quarter of a worker's share (an IPv6 client: its /64). Beyond it: 503 with "
        "`Retry-After`. At least `WEBHOOK_APP_MAX_BODY_BYTES`",
        default_doc="`67108864` (64 MiB)",
    )
    log_level: str = _setting(
        "WEBHOOK_APP_LOG_LEVEL",
        _choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "INFO",
        doc="`DEBUG`, `INFO`, `WARNING` or `ERROR`",
    )


@dataclass(frozen=True)
class _OperatorKeys:
    """Operator keys: the keys that sign replay and admin tokens."""

    replay_keys: tuple[str, ...] = _setting(
        "WEBHOOK_APP_REPLAY_KEYS",
        _key_list,
        (),
        secret=True,
        doc="comma-separated keys (16+ characters, oldest first, newest last) signing replay tokens; distinct"
        " from the webhook secrets",
        default_doc="none: replay tokens refused",
    )
    replay_token_ttl: float = _setting(
        "WEBHOOK_APP_REPLAY_TOKEN_TTL",
        _bounded(float, lambda v: 0 < v <= 86400, "greater than zero and at most 86400"),  # tokens.MAX_REPLAY_TTL
        300.0,
        doc="lifetime in seconds of the replay tokens `webhook-app replay` makes (at most a day: the intake refuses"
        " a token that claims more)",
    )
    admin_keys: tuple[str, ...] = _setting(
        "WEBHOOK_APP_ADMIN_KEYS",
        _key_list,
        (),
        secret=True,
        doc="comma-separated keys (16+ characters, oldest first, newest last) signing admin tokens",
        default_doc="none: admin API and page disabled, 404",
    )


@dataclass(frozen=True)
class _CircuitGuard:
    """The circuit guard: watch Commerce Layer's webhook circuits, reset and backfill (ops/circuit.py)."""

    # The circuit guard (ops/circuit.py): one `GET /api/webhooks` per interval, through the client's
    # rate limit; 0 turns it off.
    circuit_check_interval: float = _setting(
        "WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL",
        _non_negative(float),
        60.0,
        doc="seconds between the worker's reads of Commerce Layer's webhook circuits (one `GET /api/webhooks`"
        " page per 25 webhooks, through the rate limit); `0` turns the guard off; at least `1`",
    )
    circuit_warn_failures: int = _setting(
        "WEBHOOK_APP_CIRCUIT_WARN_FAILURES",
        _positive(int),
        5,
        doc="log a warning each time a webhook's `circuit_failure_count` rises and is at least this (Commerce"
        " Layer opens the circuit at 30)",
    )
    circuit_auto_reset: bool = _setting(
        "WEBHOOK_APP_CIRCUIT_AUTO_RESET",
        _bool,
        False,
        doc="`on`: reset an open circuit once this service's intake is healthy, then backfill the gap (see "
        "*Circuit guard*)",
        default_doc="`off`",
    )
    circuit_health_url: str = _setting(
        "WEBHOOK_APP_CIRCUIT_HEALTH_URL",
        _url,
        "",
        doc='the URL whose 200 means "the intake is healthy" before a reset, e.g. a web instance\'s '
        "`http://web:8000/readyz`",
        default_doc="none: the intake cannot be checked, so auto reset leaves circuits open and says so",
    )
    circuit_backfill_margin: float = _setting(
        "WEBHOOK_APP_CIRCUIT_BACKFILL_MARGIN",
        _non_negative(float),
        300.0,
        doc="seconds the backfill reaches back before the first failure (clock skew, an order changed just "
        "before its failed delivery)",
    )


@dataclass(frozen=True)
class _Retention:
    """Retention: what is kept and for how long (bodies, records, redaction, anonymization)."""

    # Retention: bodies and headers (names, emails, addresses) go first; the record of what was
    # received and decided later. Per-order action claims are kept: a flagged order stays flagged.
    retain_bodies_days: float = _setting(
        "WEBHOOK_APP_RETAIN_BODIES_DAYS",
        _positive(float),
        30.0,
        doc="days after receipt when a delivery's body and headers (names, emails, addresses) are removed, "
        "once its job is done or dead; its metadata and decisions stay. Also the longest a delivery can "
        "be replayed.",
    )
    retain_records_days: float = _setting(
        "WEBHOOK_APP_RETAIN_RECORDS_DAYS",
        _positive(float),
        180.0,
        doc="days after receipt when the delivery itself goes, with its job, attempts and decisions (at least"
        " the bodies' days). Whether an order's action was done is kept forever.",
    )
    prune_interval: float = _setting(
        "WEBHOOK_APP_PRUNE_INTERVAL",
        _positive(float),
        300.0,
        doc="seconds between the worker's prunes",
    )
    prune_batch: int = _setting(
        "WEBHOOK_APP_PRUNE_BATCH",
        _positive(int),
        100,
        doc="deliveries per prune transaction (each batch is short, so intake waits at most one batch: about "
        "110 ms on SQLite for 100 bodies of 30 KB, measured on the 2-core VM)",
    )
    # Optional: attribute names (e.g. customer_email,first_name,last_name,line_1,phone) whose values
    # are replaced in stored bodies once a delivery is settled and REDACT_AFTER_DAYS old.
    redact_fields: tuple[str, ...] = _setting(
        "WEBHOOK_APP_REDACT_FIELDS",
        _field_names,
        (),
        doc="optional: attribute names (e.g. `customer_email,first_name,last_name,line_1,line_2,phone`) whose"
        " values in stored bodies (the resource's and every included resource's `attributes`) become "
        '`"[redacted]"` once the delivery is settled and `WEBHOOK_APP_REDACT_AFTER_DAYS` old; the rest of'
        " the body stays until `WEBHOOK_APP_RETAIN_BODIES_DAYS`",
        default_doc="none: nothing redacted",
    )
    redact_after_days: float = _setting(
        "WEBHOOK_APP_REDACT_AFTER_DAYS",
        _positive(float),
        7.0,
        doc="when the `WEBHOOK_APP_REDACT_FIELDS` are redacted (the replay window: a replay after it sends "
        "the redacted body)",
    )
    # Honour Commerce Layer's `customers.anonymization_completed` by erasing the customer's stored
    # bodies and headers (ops/anonymization.py), in enforce and shadow mode alike; off: recorded
    # as not honoured, nothing erased (`webhook-app forget` by hand).
    honour_anonymization: bool = _setting(
        "WEBHOOK_APP_HONOUR_ANONYMIZATION",
        _bool,
        True,
        doc="erase a customer's stored bodies and headers when Commerce Layer sends "
        "`customers.anonymization_completed`, and record the four `customers.anonymization_*` events in "
        "the operations log (see *What is stored*); `webhooks register` subscribes to them. `false`: the "
        "deliveries are kept, their jobs end `disabled`, nothing is erased or recorded",
    )


#: `WEBHOOK_APP_*` variables that are not the service's settings: the test suite's PostgreSQL and
#: the compose file's own (deploy/.env.example), read by those tools, never by the service.
NOT_SETTINGS = frozenset(
    {"WEBHOOK_APP_TEST_DATABASE_URL", "WEBHOOK_APP_IMAGE", "WEBHOOK_APP_IMAGE_CACHE", "WEBHOOK_APP_HTTP_PORT"}
)
# What Kubernetes (without `enableServiceLinks: false`) and docker's links add for a service named
# `webhook-app-*`: WEBHOOK_APP_WEB_SERVICE_HOST, WEBHOOK_APP_WEB_PORT_8000_TCP_ADDR, ...
_SERVICE_LINK = re.compile(r"_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$")


def check_names(env: Mapping[str, str], known: Mapping[str, str]) -> None:
    """Refuse a variable that looks like a setting and is none (ConfigError naming it and the nearest
    setting): a misspelt name would otherwise be ignored and its default used in silence
    (`WEBHOOK_APP_MODEE=shadow` beside the credentials: enforce). Every other `WEBHOOK_APP_*` name
    is refused; of `CL_*`, a namespace other Commerce Layer tools share, only a near miss of one of
    ours (`CL_WEBHOOK_SECRET`)."""
    by_tail = {k.removeprefix("WEBHOOK_APP_").removeprefix("CL_"): k for k in known}  # compared without prefixes

    def nearest(tail: str, cutoff: float) -> str | None:
        near = difflib.get_close_matches(tail, list(by_tail), 1, cutoff)
        return by_tail[near[0]] if near else None

    for name in sorted(env):
        if name in known or name in NOT_SETTINGS:
            continue
        if name.startswith("WEBHOOK_APP_") and not _SERVICE_LINK.search(name):
            near = nearest(name.removeprefix("WEBHOOK_APP_"), 0.75)
            hint = f": did you mean {near}?" if near else " (docs/reference/configuration.md lists them)"
            raise ConfigError(name, f"is not a setting of webhook-app{hint}")
        if name.startswith("CL_") and (near := nearest(name.removeprefix("CL_"), 0.85)) and near.startswith("CL_"):
            raise ConfigError(name, f"is not a setting of webhook-app: did you mean {near}?")


# `fields(Settings)` lists the fields of the last base first, so the groups stand here in
# reverse: the configuration reference follows the order the groups are written in above.
@dataclass(frozen=True)
class Settings(_Retention, _CircuitGuard, _OperatorKeys, _Processes, _Jobs, _Decision, _CommerceLayer, _Intake):
    """Everything the service can be told. Defaults are the embedded, safe configuration."""

    def __post_init__(self) -> None:
        """Check the settings against each other, however they were made (`from_env`, `Settings(...)`,
        `with_overrides`): each mistake is a ConfigError naming the variable to change."""
        if self.mode == "enforce" and not self.has_credentials:
            missing = [
                n
                for n, k in (
                    ("CL_CLIENT_ID", self.cl_client_id),
                    ("CL_CLIENT_SECRET", self.cl_client_secret),
                    ("CL_API_BASE", self.cl_api_base),
                )
                if not k
            ]
            raise ConfigError("WEBHOOK_APP_MODE", f"enforce needs {', '.join(missing)} to be set")
        if self.lease_seconds <= self.cl_connect_timeout + self.cl_read_timeout:
            # A lease must outlive one call, or a second worker could take a job whose PATCH is
            # still in flight.
            raise ConfigError("WEBHOOK_APP_LEASE_SECONDS", "must be longer than CL_CONNECT_TIMEOUT + CL_READ_TIMEOUT")
        if 0 < self.circuit_check_interval < 1:
            # One list call per check (more with many webhooks): faster would eat the rate limit.
            raise ConfigError("WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL", "must be 0 (off) or at least 1 second")
        if self.retain_records_days < self.retain_bodies_days:
            raise ConfigError("WEBHOOK_APP_RETAIN_RECORDS_DAYS", "must be at least WEBHOOK_APP_RETAIN_BODIES_DAYS")
        if self.front_buffer_bytes < self.max_body_bytes:
            raise ConfigError("WEBHOOK_APP_FRONT_BUFFER_BYTES", "must be at least WEBHOOK_APP_MAX_BODY_BYTES")
        if self.trusted_proxies and not self.allowed_sources:
            raise ConfigError("WEBHOOK_APP_TRUSTED_PROXIES", "has no effect without WEBHOOK_APP_ALLOWED_SOURCES")
        if self.allowed_sources and self.forwarded_hops and not self.trusted_proxies:
            # Every delivery would be judged by the proxy's own address, and refused.
            raise ConfigError(
                "WEBHOOK_APP_ALLOWED_SOURCES",
                "behind a proxy (WEBHOOK_APP_FORWARDED_HOPS > 0) set WEBHOOK_APP_TRUSTED_PROXIES to its addresses",
            )
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ConfigError("WEBHOOK_APP_RETRY_MAX_SECONDS", "must be at least WEBHOOK_APP_RETRY_BASE_SECONDS")

    def not_ready_reasons(self) -> list[str]:
        """Why the intake could store nothing with these settings (for `/readyz` and the start
        banner); empty when it can. A secret that is set but unusable never gets here: `from_env`
        refuses it (the service does not start)."""
        if not self.webhook_secrets and self.organizations_path is None:
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
        check_names(env, cls.variables())
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
        return cls(**values)  # __post_init__ checks the settings against each other
