from webhook_app.config import RateLimit
from webhook_app.ratelimit import WINDOW_GUARD_SECONDS as G
from webhook_app.ratelimit import LocalRateLimiter, earliest_slot


def test_earliest_slot_respects_every_window():
    limits = [RateLimit(3, 60), RateLimit(2, 10)]
    assert earliest_slot(0, [], limits) == 0
    assert earliest_slot(1, [0, 1], limits) == 10 + G  # 2 per 10 s (plus the guard)
    assert earliest_slot(30, [0, 10, 20], limits) == 60 + G  # 3 per 60 s


def test_local_limiter_never_exceeds_limits_over_many_calls():
    now = [0.0]
    lim = LocalRateLimiter([RateLimit(100, 60), RateLimit(25, 10)], clock=lambda: now[0])
    slots = [lim.reserve() for _ in range(400)]
    for s in slots:
        assert sum(1 for t in slots if s - 10 - G < t <= s) <= 25
        assert sum(1 for t in slots if s - 60 - G < t <= s) <= 100
    # and it is not needlessly slow: bursts of 25 every 10 s until 100 in the minute, so calls
    # 376-400 can start at 210 s and no earlier, plus one guard per window boundary waited for
    # (bursts at 0, 10+G, 20+2G, 30+3G, then 60+G... 210+6G).
    assert abs(slots[-1] - (210 + 6 * G)) < 1e-9


def test_no_limits_means_no_waiting():
    lim = LocalRateLimiter([], clock=lambda: 5.0)
    assert lim.reserve() <= 5.0
