"""Sliding-window rate limits, as Commerce Layer applies them.

A request is checked against several windows at once (e.g. the overall `api` class and its own
endpoint); it is admitted only if every window has room, and then counts in all of them. Refused
requests do not count. The result names the most constrained window, which is what the
`x-ratelimit-*` headers report. Commerce Layer limits per client IP; everything in the sandbox
comes from 127.0.0.1, so windows are keyed by class (and endpoint) only.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from commercelayer_sandbox.config import Window


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    interval: float
    remaining: int
    #: Seconds until the refusing window has room again (0 when allowed).
    retry_in: float
    #: The key of the window reported (e.g. `("api",)` or `("endpoint", "orders.get")`).
    key: tuple[str, ...]

    def headers(self) -> dict[str, str]:
        interval = int(self.interval) if float(self.interval).is_integer() else self.interval
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-interval": str(interval),
            "x-ratelimit-remaining": str(self.remaining),
        }


class SlidingWindowLimiter:
    """Thread-safe sliding-window log limiter with an injectable monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._hits: dict[tuple[tuple[str, ...], int, float], deque[float]] = {}

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()

    def hit(self, windows: Sequence[tuple[tuple[str, ...], Window]], *, count_refused: bool = False) -> Verdict | None:
        """Admit (and count) one request, or refuse it; None when no window applies. A refused
        request counts in every window too with `count_refused` (Commerce Layer does not say)."""
        if not windows:
            return None
        now = self._clock()
        with self._lock:
            logs = []
            for key, window in windows:
                log = self._hits.setdefault((key, window.count, window.seconds), deque())
                while log and log[0] <= now - window.seconds:
                    log.popleft()
                logs.append((key, window, log))
            full = [(key, w, log) for key, w, log in logs if len(log) >= w.count]
            if full:
                key, w, log = max(full, key=lambda item: item[2][0] + item[1].seconds)
                verdict = Verdict(False, w.count, w.seconds, 0, max(0.0, log[0] + w.seconds - now), key)
                if count_refused:
                    for _, _, other in logs:
                        other.append(now)
                return verdict
            for _, _, log in logs:
                log.append(now)
            key, w, log = min(logs, key=lambda item: item[1].count - len(item[2]))
            return Verdict(True, w.count, w.seconds, w.count - len(log), 0.0, key)
