"""What happened: counters and the log of API requests, for tests and benchmarks.

`Stats.count("wallet.save_flags")` bumps a dotted counter; `Stats.snapshot()` nests them
(`{"wallet": {"save_flags": 3}}`). The request log keeps every emulated-API request (newest last,
bounded) with the `Authorization` header and OAuth client secrets redacted.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[redacted]"
_SECRET_BODY_KEYS = frozenset({"client_secret", "customer_password", "password"})


def redact_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k: (REDACTED if k.lower() in ("authorization", "cookie") else v) for k, v in headers}


def redact_body(body: Any) -> Any:
    """A copy of a JSON body with secret-bearing keys (anywhere in it) redacted."""
    if isinstance(body, Mapping):
        return {k: (REDACTED if k in _SECRET_BODY_KEYS else redact_body(v)) for k, v in body.items()}
    if isinstance(body, list):
        return [redact_body(v) for v in body]
    return body


class Stats:
    """Thread-safe counters and request log."""

    def __init__(self, *, log_size: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._log_size = log_size
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._counters: Counter[str] = Counter()
            self._by_route: dict[str, Counter[str]] = {}
            self._requests: deque[dict[str, Any]] = deque(maxlen=self._log_size)
            self._seq = 0

    def resize_log(self, size: int) -> None:
        with self._lock:
            if size != self._log_size:
                self._log_size = size
                self._requests = deque(self._requests, maxlen=size)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def record_request(self, entry: dict[str, Any]) -> None:
        """Log one answered (or dropped) API request and count it by route and status."""
        status = "dropped" if entry.get("status") is None else str(entry["status"])
        with self._lock:
            self._seq += 1
            entry = {"seq": self._seq, **entry}
            self._requests.append(entry)
            self._by_route.setdefault(entry.get("route") or "unrouted", Counter())[status] += 1
            self._counters["requests.total"] += 1

    def requests(
        self,
        *,
        route: str | None = None,
        method: str | None = None,
        status: int | None = None,
        since: int = 0,
    ) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._requests)
        return [
            r
            for r in items
            if r["seq"] > since
            and (route is None or r.get("route") == route or (r.get("route") or "").startswith(route + "."))
            and (method is None or r["method"] == method.upper())
            and (status is None or r.get("status") == status)
        ]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self._counters)
            by_route = {route: dict(c) for route, c in sorted(self._by_route.items())}
        out: dict[str, Any] = {"by_route": by_route}
        for name, value in sorted(counters.items()):
            node = out
            *parents, leaf = name.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return out
