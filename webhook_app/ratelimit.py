"""Client-side rate limiting towards Commerce Layer: sliding windows, reserved ahead of time.

Commerce Layer limits per organization and IP with sliding windows
(https://docs.commercelayer.io/developers/rate-limits). `LocalRateLimiter`
keeps the windows in this process; the PostgreSQL store provides a shared one for many workers
(`store.postgres.PostgresRateLimiter`). Both reserve a slot (the earliest instant at which every
window has room) and return it, so callers sleep outside any lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from webhook_app.config import RateLimit


class RateLimiter(Protocol):
    def reserve(self) -> float:
        """Reserve a call slot and return the time (epoch seconds) it may start.

        One budget for every call: Commerce Layer counts per IP, so all routes (and all processes
        behind one egress address) share it."""
        ...

    def hold(self, until: float) -> None:
        """Commerce Layer refused a call (429): no slot starts before `until` (epoch seconds).
        Another user of the same egress address spent the budget, which no window here saw.
        Without limits (`CL_RATE_LIMITS` empty) there is nothing to hold; a hold reaches at most
        the longest window ahead, so a call never waits longer than the windows alone could make
        it (a job's lease is renewed before its call, not during the wait)."""
        ...


#: Each window is kept this much longer than Commerce Layer's. A slot is when a call may *start*,
#: but Commerce Layer counts a call when it *arrives*; with windows of exactly the same length, a
#: call that arrives a little sooner after its start than the call it replaces in the window
#: (scheduling, connection reuse) lands inside the window and is refused with 429 (seen against
#: the sandbox at the documented 25/10: BENCHMARKS.md). 0.25 s costs 2.5% of a 10 s window.
WINDOW_GUARD_SECONDS = 0.25


def earliest_slot(now: float, history: Sequence[float], limits: Sequence[RateLimit]) -> float:
    """The first instant >= now at which one more call fits every window, given past calls.

    `history` is sorted ascending and may contain future reservations. Windows are
    `WINDOW_GUARD_SECONDS` longer than the limits say.
    """
    t = now
    changed = True
    while changed:
        changed = False
        for lim in limits:
            span = lim.seconds + WINDOW_GUARD_SECONDS
            # calls in (t - span, t]; reservations after t count too (they are in the window).
            start = t - span
            inside = [x for x in history if x > start]
            if len(inside) >= lim.count:
                # must wait until the (len - count + 1)-th oldest call in the window leaves it
                candidate = inside[len(inside) - lim.count] + span
                if candidate > t:
                    t = candidate
                    changed = True
    return t


class LocalRateLimiter:
    """In-process sliding-window limiter (one per client)."""

    def __init__(self, limits: Sequence[RateLimit], *, clock: Callable[[], float] = time.time) -> None:
        self.limits = tuple(limits)
        self.clock = clock
        self._lock = threading.Lock()
        self._history: deque[float] = deque()
        self._horizon = max((lim.seconds for lim in self.limits), default=0.0) + WINDOW_GUARD_SECONDS
        self._held_until = 0.0

    def hold(self, until: float) -> None:
        with self._lock:
            self._held_until = max(self._held_until, min(until, self.clock() + self._horizon))

    def reserve(self) -> float:
        if not self.limits:
            return 0.0  # no limit (nor hold): any time is fine
        with self._lock:
            now = max(self.clock(), self._held_until)
            while self._history and self._history[0] <= now - self._horizon:
                self._history.popleft()
            slot = earliest_slot(now, self._history, self.limits)
            # keep the history sorted (reservations may interleave)
            if self._history and self._history[-1] > slot:
                items = sorted([*self._history, slot])
                self._history = deque(items)
            else:
                self._history.append(slot)
            return slot


def wait_for_slot(
    limiter: RateLimiter,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Reserve a slot and sleep until it; return the seconds waited."""
    slot = limiter.reserve()
    delay = slot - clock()
    if delay > 0:
        sleep(delay)
        return delay
    return 0.0
