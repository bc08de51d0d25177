from webhook_app.config import RateLimit
from webhook_app.ratelimit import LocalRateLimiter, earliest_slot


def test_earliest_slot_respects_every_window():
    limits = [RateLimit(3, 60), RateLimit(2, 10)]
    assert earliest_slot(0, [], limits) == 0
    assert earliest_slot(1, [0, 1], limits) == 10  # 2 per 10 s
    assert earliest_slot(30, [0, 10, 20], limits) == 60  # 3 per 60 s


def test_local_limiter_never_exceeds_limits_over_many_calls():
    now = [0.0]
    lim = LocalRateLimiter([RateLimit(100, 60), RateLimit(25, 10)], clock=lambda: now[0])
    slots = [lim.reserve("x") for _ in range(400)]
    for i, s in enumerate(slots):
        assert sum(1 for t in slots if s - 10 < t <= s) <= 25
        assert sum(1 for t in slots if s - 60 < t <= s) <= 100
    # and it is not needlessly slow: bursts of 25 every 10 s until 100 in the minute, so calls
    # 376-400 can start at 210 s and no earlier.
    assert slots[-1] == 210


def test_no_limits_means_no_waiting():
    lim = LocalRateLimiter([], clock=lambda: 5.0)
    assert lim.reserve("x") <= 5.0
