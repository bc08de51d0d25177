"""Fault injection: what can go wrong between a client and Commerce Layer, on demand.

API-side rules apply to routes (`orders.get`, `orders.patch`, `orders.list`, `token`,
`customer_payment_sources`, `webhooks.create`...). A rule's `route` matches a route name exactly,
as a dotted prefix (`orders` matches `orders.get`), or as a glob (`*`). Each rule may add:

- `latency_ms`: delay before the request is handled (every matching request);
- `error_share` (0..1) of 5xx answers with `error_status` (default 503);
- `hang_share` of requests that sleep `hang_seconds` before being handled (past a client's
  timeout; the change is still applied after the sleep, as a slow server would);
- `drop_share` of requests whose TCP connection is closed without any answer;
- `apply_then_fail`: errors and drops happen *after* the request was applied, so the client
  sees a failure for a change that was made (an ambiguous outcome);
- `late_answer_share` of requests that are applied at once and whose answer is held back
  `late_answer_seconds` before it is written: set it past the client's read timeout and the
  client times out on a change that was made (then finds the answer's socket gone);
- a spell: `requests` (the next N matching requests) and/or `seconds` (for T seconds), after
  which the rule removes itself. Without either, the rule stays until `DELETE /_sandbox/faults`.

Shares are drawn from one `random.Random` per rule, seeded from the spec's `seed`, one draw per
matching request: drop in [0, drop_share), hang in the next `hang_share`, error in the next
`error_share`, late answer in the next `late_answer_share` (so the shares of one rule must add
up to at most 1). A given sequence of requests
thus meets the same faults every run.

Sender-side (`sender` in the spec): `lose_answer_share` of deliveries whose answer the sender
throws away after the receiver processed it (it records a timeout and retries, so the receiver
sees a redelivery), optionally limited to one `webhook_id` and to a spell (`requests`,
`seconds`); and `webhook_timeouts`, a per-webhook override of the delivery timeout (seconds).
"""

from __future__ import annotations

import fnmatch
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from commercelayer_sandbox.errors import SandboxError

_RULE_KEYS = (
    "route",
    "latency_ms",
    "error_share",
    "error_status",
    "hang_share",
    "hang_seconds",
    "drop_share",
    "apply_then_fail",
    "late_answer_share",
    "late_answer_seconds",
    "requests",
    "seconds",
)
_SENDER_KEYS = ("lose_answer_share", "webhook_id", "requests", "seconds", "webhook_timeouts")


@dataclass(frozen=True)
class FaultDecision:
    """What to do to one request."""

    latency: float = 0.0
    hang: float = 0.0
    drop: bool = False
    error_status: int | None = None
    apply_then_fail: bool = False
    late_answer: float = 0.0

    @property
    def kinds(self) -> list[str]:
        out = []
        if self.latency:
            out.append("latency")
        if self.hang:
            out.append("hang")
        if self.drop:
            out.append("drop")
        if self.error_status:
            out.append("error")
        if self.apply_then_fail and (self.drop or self.error_status):
            out.append("apply_then_fail")
        if self.late_answer:
            out.append("late_answer")
        return out


NO_FAULT = FaultDecision()


@dataclass
class _Spell:
    requests: int | None = None
    until: float | None = None
    seconds: float | None = None

    def active(self, now: float) -> bool:
        return (self.requests is None or self.requests > 0) and (self.until is None or now < self.until)

    def spend(self) -> None:
        if self.requests is not None:
            self.requests -= 1


@dataclass
class FaultRule:
    route: str = "*"
    latency_ms: float = 0.0
    error_share: float = 0.0
    error_status: int = 503
    hang_share: float = 0.0
    hang_seconds: float = 0.0
    drop_share: float = 0.0
    apply_then_fail: bool = False
    late_answer_share: float = 0.0
    late_answer_seconds: float = 0.0
    spell: _Spell = field(default_factory=_Spell)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def matches(self, route: str) -> bool:
        return route == self.route or route.startswith(self.route + ".") or fnmatch.fnmatchcase(route, self.route)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("spell", "rng")}
        out["requests"] = self.spell.requests
        out["seconds"] = self.spell.seconds
        return out


@dataclass
class SenderFaults:
    lose_answer_share: float = 0.0
    webhook_id: str | None = None
    spell: _Spell = field(default_factory=_Spell)
    webhook_timeouts: dict[str, float] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lose_answer_share": self.lose_answer_share,
            "webhook_id": self.webhook_id,
            "requests": self.spell.requests,
            "seconds": self.spell.seconds,
            "webhook_timeouts": dict(self.webhook_timeouts),
        }


class Faults:
    """The active fault rules; thread-safe; `clock` is monotonic seconds (for spells)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.seed: int | str = 0
            self.rules: list[FaultRule] = []
            self.sender = SenderFaults()

    def configure(self, spec: Mapping[str, Any], path: str = "faults") -> None:
        """Replace every rule with `{"seed": ..., "rules": [...], "sender": {...}}`."""
        if not isinstance(spec, Mapping):
            raise SandboxError(path, "must be an object")
        unknown = set(spec) - {"seed", "rules", "sender"}
        if unknown:
            raise SandboxError(path, f"unknown keys {sorted(unknown)} (known: seed, rules, sender)")
        seed = spec.get("seed", 0)
        if not isinstance(seed, int | str) or isinstance(seed, bool):
            raise SandboxError(f"{path}.seed", "must be an integer or a string")
        now = self._clock()
        raw_rules = spec.get("rules", [])
        if not isinstance(raw_rules, list):
            raise SandboxError(f"{path}.rules", "must be a list")
        rules = [_rule(r, f"{path}.rules[{n}]", seed, n, now) for n, r in enumerate(raw_rules)]
        sender = _sender(spec.get("sender", {}), f"{path}.sender", seed, now)
        with self._lock:
            self.seed, self.rules, self.sender = seed, rules, sender

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            return {
                "seed": self.seed,
                "rules": [r.to_dict() for r in self.rules if r.spell.active(now)],
                "sender": self.sender.to_dict(),
            }

    def decide(self, route: str) -> FaultDecision:
        """The faults for one request to `route` (spends spells, draws shares)."""
        with self._lock:
            now = self._clock()
            self.rules = [r for r in self.rules if r.spell.active(now)]
            latency = hang = 0.0
            drop = False
            error: int | None = None
            apply_then_fail = False
            late = 0.0
            for rule in self.rules:
                if not rule.matches(route):
                    continue
                rule.spell.spend()
                latency += rule.latency_ms / 1000
                draw = rule.rng.random()
                if draw < rule.drop_share:
                    drop = True
                    apply_then_fail = apply_then_fail or rule.apply_then_fail
                elif draw < rule.drop_share + rule.hang_share:
                    hang = max(hang, rule.hang_seconds)
                elif draw < rule.drop_share + rule.hang_share + rule.error_share:
                    if error is None:
                        error = rule.error_status
                        apply_then_fail = apply_then_fail or rule.apply_then_fail
                elif draw < (rule.drop_share + rule.hang_share + rule.error_share + rule.late_answer_share):
                    late = max(late, rule.late_answer_seconds)
            if drop:
                error = None
            return FaultDecision(latency, hang, drop, error, apply_then_fail, late)

    def lose_answer(self, webhook_id: str) -> bool:
        """Whether the sender should throw away the answer of this delivery."""
        with self._lock:
            s = self.sender
            if not s.lose_answer_share or (s.webhook_id and s.webhook_id != webhook_id):
                return False
            if not s.spell.active(self._clock()):
                return False
            s.spell.spend()
            return s.rng.random() < s.lose_answer_share

    def set_webhook_timeout(self, webhook_id: str, seconds: float) -> None:
        if seconds <= 0:
            raise SandboxError(f"webhook_timeouts.{webhook_id}", "must be positive")
        with self._lock:
            self.sender.webhook_timeouts[webhook_id] = seconds

    def webhook_timeout(self, webhook_id: str) -> float | None:
        with self._lock:
            return self.sender.webhook_timeouts.get(webhook_id)


def _share(value: Any, path: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise SandboxError(path, "must be a number from 0 to 1")
    return float(value)


def _non_negative(value: Any, path: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise SandboxError(path, "must be a non-negative number")
    return float(value)


def _spell(raw: Mapping[str, Any], path: str, now: float) -> _Spell:
    requests = raw.get("requests")
    if requests is not None and (not isinstance(requests, int) or isinstance(requests, bool) or requests < 1):
        raise SandboxError(f"{path}.requests", "must be a positive integer")
    seconds = raw.get("seconds")
    if seconds is not None:
        seconds = _non_negative(seconds, f"{path}.seconds")
    return _Spell(requests, None if seconds is None else now + seconds, seconds)


def _rule(raw: Any, path: str, seed: int | str, index: int, now: float) -> FaultRule:
    if not isinstance(raw, Mapping):
        raise SandboxError(path, "must be an object")
    unknown = set(raw) - set(_RULE_KEYS)
    if unknown:
        raise SandboxError(path, f"unknown keys {sorted(unknown)} (known: {', '.join(_RULE_KEYS)})")
    route = raw.get("route", "*")
    if not isinstance(route, str) or not route:
        raise SandboxError(f"{path}.route", "must be a route name or pattern")
    status = raw.get("error_status", 503)
    if not isinstance(status, int) or not 500 <= status <= 599:
        raise SandboxError(f"{path}.error_status", "must be a 5xx status")
    rule = FaultRule(
        route=route,
        latency_ms=_non_negative(raw.get("latency_ms", 0), f"{path}.latency_ms"),
        error_share=_share(raw.get("error_share", 0), f"{path}.error_share"),
        error_status=status,
        hang_share=_share(raw.get("hang_share", 0), f"{path}.hang_share"),
        hang_seconds=_non_negative(raw.get("hang_seconds", 0), f"{path}.hang_seconds"),
        drop_share=_share(raw.get("drop_share", 0), f"{path}.drop_share"),
        apply_then_fail=bool(raw.get("apply_then_fail", False)),
        late_answer_share=_share(raw.get("late_answer_share", 0), f"{path}.late_answer_share"),
        late_answer_seconds=_non_negative(raw.get("late_answer_seconds", 0), f"{path}.late_answer_seconds"),
        spell=_spell(raw, path, now),
        rng=random.Random(f"{seed}:{index}"),  # noqa: S311 - deterministic fault draws
    )
    total = rule.drop_share + rule.hang_share + rule.error_share + rule.late_answer_share
    if total > 1 + 1e-9:
        raise SandboxError(path, "drop_share + hang_share + error_share + late_answer_share must not exceed 1")
    if rule.hang_share and not rule.hang_seconds:
        raise SandboxError(f"{path}.hang_seconds", "must be set when hang_share is")
    if rule.late_answer_share and not rule.late_answer_seconds:
        raise SandboxError(f"{path}.late_answer_seconds", "must be set when late_answer_share is")
    return rule


def _sender(raw: Any, path: str, seed: int | str, now: float) -> SenderFaults:
    if not isinstance(raw, Mapping):
        raise SandboxError(path, "must be an object")
    unknown = set(raw) - set(_SENDER_KEYS)
    if unknown:
        raise SandboxError(path, f"unknown keys {sorted(unknown)} (known: {', '.join(_SENDER_KEYS)})")
    timeouts = raw.get("webhook_timeouts", {})
    if not isinstance(timeouts, Mapping):
        raise SandboxError(f"{path}.webhook_timeouts", "must map webhook ids to seconds")
    checked = {}
    for hook_id, seconds in timeouts.items():
        value = _non_negative(seconds, f"{path}.webhook_timeouts.{hook_id}")
        if value <= 0:
            raise SandboxError(f"{path}.webhook_timeouts.{hook_id}", "must be positive")
        checked[str(hook_id)] = value
    webhook_id = raw.get("webhook_id")
    if webhook_id is not None and not isinstance(webhook_id, str):
        raise SandboxError(f"{path}.webhook_id", "must be a webhook id")
    return SenderFaults(
        lose_answer_share=_share(raw.get("lose_answer_share", 0), f"{path}.lose_answer_share"),
        webhook_id=webhook_id,
        spell=_spell(raw, path, now),
        webhook_timeouts=checked,
        rng=random.Random(f"{seed}:sender"),  # noqa: S311 - deterministic fault draws
    )
