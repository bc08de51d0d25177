"""The sandbox's knobs: token lifetime, rate limits, pagination and the webhook sender.

Configuration objects are immutable; `SandboxConfig.updated(changes)` returns a new one after
checking every key and value (unknown keys are refused, so a typo never silently does nothing).
The same mapping shape is used by scenario files (`[sandbox]`), `PUT /_sandbox/config` and the
command line. Defaults are Commerce Layer's documented behaviour (test mode) where it is
documented, and stated assumptions where it is not (see the module attributes below).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from commercelayer_sandbox.errors import SandboxError


@dataclass(frozen=True)
class Window:
    """At most `count` requests in any sliding window of `seconds`."""

    count: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}"


def parse_windows(value: Any, path: str) -> tuple[Window, ...]:
    """`"100/60"`, `["100/60", "25/10"]`, `[{"count": 100, "seconds": 60}]`; `[]`/`null`: off."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise SandboxError(path, "must be a list of COUNT/SECONDS windows")
    out = []
    for n, item in enumerate(items):
        if isinstance(item, Mapping) and set(item) == {"count", "seconds"}:
            count, seconds = item["count"], item["seconds"]
        elif isinstance(item, str) and (m := re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)s?\s*", item)):
            count, seconds = int(m.group(1)), float(m.group(2))
        else:
            raise SandboxError(f"{path}[{n}]", f"{item!r} is not COUNT/SECONDS")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise SandboxError(f"{path}[{n}]", "count must be a positive integer")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
            raise SandboxError(f"{path}[{n}]", "seconds must be positive")
        out.append(Window(count, float(seconds)))
    return tuple(out)


@dataclass(frozen=True)
class SenderConfig:
    """How webhooks are delivered.

    Documented by Commerce Layer: 5 s to answer, up to 10 retries, circuit opening after 30
    consecutive failures. Not documented (assumptions, configurable): the backoff, here
    `backoff_base * backoff_factor ** (retry - 1)` seconds capped at `backoff_max`.
    """

    timeout: float = 5.0
    max_retries: int = 10
    backoff_base: float = 1.0
    backoff_factor: float = 2.0
    backoff_max: float = 3600.0
    circuit_threshold: int = 30
    concurrency: int = 4
    #: The local address deliveries come from ("" lets the system choose). Commerce Layer calls
    #: from three published addresses per region (core/callbacks-security); on loopback e.g.
    #: 127.0.0.2 plays one, so a receiver's source allowlist can be tested against the sandbox.
    source_address: str = ""
    #: Ordering is not documented (FACTS: "do not rely on it"): each first delivery waits a
    #: random 0..reorder_seconds (seeded, the same every run), so events can arrive out of order.
    #: 0 (default) sends in the order the events happened.
    reorder_seconds: float = 0.0

    def backoff(self, retry: int) -> float:
        """Delay before retry number `retry` (1-based)."""
        return min(self.backoff_max, self.backoff_base * self.backoff_factor ** (retry - 1))


@dataclass(frozen=True)
class SandboxConfig:
    """Everything `PUT /_sandbox/config` can change."""

    organization_id: str = "SandboxOrg"
    #: The organization's slug and the domain: tokens name the issuer `https://auth.<domain>`,
    #: from which clients derive the API base `https://<slug>.<domain>` (Commerce Layer's
    #: domain is commercelayer.io; the sandbox's default keeps clients on loopback).
    organization_slug: str = "sandbox"
    domain: str = "localhost"
    #: `test` or `live`: the tokens' `test` claim and every answer's `meta.mode`.
    mode: str = "test"
    #: How a save the gateway cannot honour is answered (undocumented): `error` (422
    #: VALIDATION_ERROR with the reason) or `no_entry` (200, no new wallet entry).
    wallet_save_refusal: str = "error"
    #: Where a saved card that has expired fails when it is reused (FACTS: it fails; where is not
    #: documented): `place` (422 on `_place`/`_authorize` of the order it was given to), `use`
    #: (422 on `_customer_payment_source_id`) or `none` (never: kinder than Commerce Layer).
    expired_card_refusal: str = "place"
    token_ttl: float = 7200.0
    #: How the token endpoint refuses (undocumented): `jsonapi` (`{"errors": [...]}`, as the API
    #: does) or `oauth` (RFC 6749 5.2: `{"error": "invalid_client", "error_description"}`).
    auth_error_shape: str = "jsonapi"
    auth_limits: tuple[Window, ...] = (Window(30, 60.0),)
    api_limits: tuple[Window, ...] = (Window(100, 60.0),)
    endpoint_limits: tuple[Window, ...] = (Window(25, 10.0),)
    retry_after: float | None = None
    #: Whether a refused (429) request counts in the windows too (undocumented; counting it is
    #: the harder choice: a client that keeps calling while refused stays refused).
    rate_limit_count_refused: bool = False
    page_size_default: int = 10
    page_size_max: int = 25
    check_responses: bool = False
    request_log_size: int = 100_000
    sender: SenderConfig = field(default_factory=SenderConfig)

    def updated(self, changes: Mapping[str, Any], path: str = "config") -> SandboxConfig:
        """A copy with `changes` applied (nested `sender` mapping allowed); SandboxError if bad."""
        if not isinstance(changes, Mapping):
            raise SandboxError(path, "must be an object")
        top: dict[str, Any] = {}
        for key, value in changes.items():
            where = f"{path}.{key}"
            if key == "sender":
                top["sender"] = _update_plain(self.sender, value, where)
            elif key in ("auth_limits", "api_limits", "endpoint_limits"):
                top[key] = parse_windows(value, where)
            elif key == "retry_after":
                top[key] = None if value is None else _number(value, where, minimum=0.0)
            elif key in _SIMPLE_KEYS:
                top[key] = _convert(getattr(self, key), value, where)
            else:
                raise SandboxError(where, f"unknown setting (known: {', '.join(sorted(KNOWN_KEYS))})")
        new = replace(self, **top)
        for key, allowed in _CHOICES.items():
            if getattr(new, key) not in allowed:
                raise SandboxError(f"{path}.{key}", f"must be {' or '.join(allowed)}")
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", new.organization_slug):
            raise SandboxError(f"{path}.organization_slug", "must be lowercase letters, digits, -")
        if new.page_size_default > new.page_size_max:
            raise SandboxError(path, "page_size_default cannot exceed page_size_max")
        return new

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("auth_limits", "api_limits", "endpoint_limits"):
            out[key] = [str(w) for w in getattr(self, key)]
        return out


#: The settings that take one of a few words.
_CHOICES: dict[str, tuple[str, ...]] = {
    "wallet_save_refusal": ("error", "no_entry"),
    "expired_card_refusal": ("place", "use", "none"),
    "auth_error_shape": ("jsonapi", "oauth"),
    "mode": ("test", "live"),
}
_SIMPLE_KEYS = {
    "organization_id",
    "organization_slug",
    "domain",
    "mode",
    "wallet_save_refusal",
    "expired_card_refusal",
    "token_ttl",
    "auth_error_shape",
    "page_size_default",
    "page_size_max",
    "check_responses",
    "rate_limit_count_refused",
    "request_log_size",
}
KNOWN_KEYS = frozenset(f.name for f in fields(SandboxConfig))
_POSITIVE_INTS = {
    "page_size_default",
    "page_size_max",
    "request_log_size",
    "max_retries",
    "circuit_threshold",
    "concurrency",
}


def _update_plain(current: Any, changes: Any, path: str) -> Any:
    if not isinstance(changes, Mapping):
        raise SandboxError(path, "must be an object")
    names = {f.name for f in fields(current)}
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in names:
            raise SandboxError(f"{path}.{key}", f"unknown setting (known: {', '.join(sorted(names))})")
        if key == "source_address" and value == "":
            out[key] = ""  # back to the system's choice
            continue
        out[key] = _convert(getattr(current, key), value, f"{path}.{key}")
    if out.get("source_address"):
        try:
            ipaddress.ip_address(out["source_address"])
        except ValueError:
            raise SandboxError(f"{path}.source_address", "must be an IP address") from None
    if "max_retries" in out and out["max_retries"] < 0:
        raise SandboxError(f"{path}.max_retries", "must not be negative")
    return replace(current, **out)


def _convert(current: Any, value: Any, path: str) -> Any:
    name = path.rsplit(".", 1)[-1]
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise SandboxError(path, "must be true or false")
        return value
    if isinstance(current, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise SandboxError(path, "must be an integer")
        if name == "max_retries":
            return value
        if name in _POSITIVE_INTS and value < 1:
            raise SandboxError(path, "must be at least 1")
        return value
    if isinstance(current, float):
        return _number(value, path, minimum=0.0, strict=name in ("token_ttl", "timeout", "backoff_factor"))
    if isinstance(current, str):
        if not isinstance(value, str) or not value:
            raise SandboxError(path, "must be a non-empty string")
        return value
    raise SandboxError(path, "cannot be set")


def _number(value: Any, path: str, *, minimum: float, strict: bool = False) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SandboxError(path, "must be a number")
    if value < minimum or (strict and value <= minimum):
        raise SandboxError(path, f"must be {'greater than' if strict else 'at least'} {minimum:g}")
    return float(value)
