"""The one backoff schedule the worker's loop, its retries and the supervisor's restarts share."""

from __future__ import annotations

import random

from webhook_app.backoff import doubling, retry_delay
from webhook_app.runtime import WORKER_STABLE_SECONDS, restart_delay


def test_doubling_starts_at_base_doubles_and_stops_at_cap():
    assert [doubling(n, base=1.0, cap=30.0) for n in range(8)] == [1, 1, 2, 4, 8, 16, 30, 30]
    assert doubling(10_000, base=0.5, cap=60.0) == 60.0  # a long outage: capped, no overflow


def test_retry_delay_stays_between_half_the_ceiling_and_the_ceiling():
    rng = random.Random(7)
    for attempt in (1, 3, 5, 5_000):
        ceiling = doubling(attempt, base=2.0, cap=100.0)
        d = retry_delay(attempt, base=2.0, cap=100.0, rng=rng)
        assert ceiling / 2 <= d <= ceiling


def test_restarts_follow_the_schedule_and_start_again_after_a_stable_run():
    restarts, waits = 0, []
    for _ in range(7):
        restarts, wait = restart_delay(restarts, ran_for=1.0)
        waits.append(wait)
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(restarts, ran_for=WORKER_STABLE_SECONDS + 1) == (1, 1.0)
