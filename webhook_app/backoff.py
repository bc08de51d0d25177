"""Backoff: how long to wait before trying again, written once.

`doubling` is the plain schedule (a loop waiting out a store outage, a supervisor restarting a
process); `retry_delay` adds jitter and honours a `Retry-After` (a job's next attempt, asking
Commerce Layer again about refused credentials).
"""

from __future__ import annotations

import random

# 2 ** 64 times any base is past every cap: the exponent stops there (no float overflow).
_MAX_EXPONENT = 64


def doubling(n: int, *, base: float, cap: float) -> float:
    """The `n`-th wait: `base` for the first (and for 0), doubled each time, at most `cap`."""
    return min(cap, base * 2.0 ** min(max(0, n - 1), _MAX_EXPONENT))


def retry_delay(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped; >= Retry-After."""
    r = rng or random
    ceiling = doubling(attempt, base=base, cap=cap)
    delay = ceiling / 2 + r.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay
