import hashlib

import pytest

from webhook_app.tokens import (
    ADMIN,
    MAX_REPLAY_TTL,
    REPLAY,
    TokenError,
    Tokens,
    check_replay_token,
    make_replay_token,
)

KEY_OLD, KEY_NEW = "old-key-0123456789abcdef", "new-key-0123456789abcdef"


class Clock:
    t = 1_800_000_000.0

    def __call__(self):
        return self.t


def test_admin_token_round_trip_and_expiry():
    clock = Clock()
    t = Tokens(ADMIN, (KEY_NEW,), clock)
    tok = t.make(ttl=3600)
    assert t.check(tok)["p"] == ADMIN
    clock.t += 3599
    t.check(tok)
    clock.t += 2
    with pytest.raises(TokenError, match="expired"):
        t.check(tok)


def test_forged_and_tampered_tokens_are_refused():
    t = Tokens(ADMIN, (KEY_NEW,))
    tok = t.make(ttl=60)
    with pytest.raises(TokenError, match="invalid"):
        Tokens(ADMIN, ("attacker-key-0123456789",)).check(tok)
    with pytest.raises(TokenError):
        t.check(tok[:-2] + ("AA" if not tok.endswith("AA") else "BB"))
    with pytest.raises(TokenError, match="missing"):
        t.check("")
    with pytest.raises(TokenError):
        t.check("x" * 5000)


def test_wrong_purpose_is_refused_even_with_the_same_key():
    admin = Tokens(ADMIN, (KEY_NEW,)).make(ttl=60)
    with pytest.raises(TokenError):
        Tokens(REPLAY, (KEY_NEW,)).check(admin)


def test_keys_rotate_newest_last():
    old = Tokens(ADMIN, (KEY_OLD,)).make(ttl=60)
    rotated = Tokens(ADMIN, (KEY_OLD, KEY_NEW))
    assert rotated.check(old)["p"] == ADMIN  # still accepted during rotation
    new = rotated.make(ttl=60)
    assert Tokens(ADMIN, (KEY_NEW,)).check(new)  # signed with the newest
    with pytest.raises(TokenError):
        Tokens(ADMIN, (KEY_NEW,)).check(old)  # once the old key is dropped


def test_replay_token_is_bound_to_its_body():
    r = Tokens(REPLAY, (KEY_NEW,))
    tok = make_replay_token(r, b"body-1", topic="orders.place", ttl=60)
    assert check_replay_token(r, tok, b"body-1", topic="orders.place")
    with pytest.raises(TokenError, match="another body"):
        check_replay_token(r, tok, b"body-2", topic="orders.place")
    t = "orders.place"
    assert check_replay_token(r, make_replay_token(r, b"b", topic=t, ttl=60), b"b", topic=t) != check_replay_token(
        r, make_replay_token(r, b"b", topic=t, ttl=60), b"b", topic=t
    )


def test_replay_token_is_bound_to_its_topic():
    r = Tokens(REPLAY, (KEY_NEW,))
    tok = make_replay_token(r, b"body-1", topic="orders.place", ttl=60)
    with pytest.raises(TokenError, match="another topic"):
        check_replay_token(r, tok, b"body-1", topic="orders.cancel")
    untopical = r.make(ttl=60, b=hashlib.sha256(b"body-1").hexdigest(), n="abcd")  # made before the binding
    with pytest.raises(TokenError, match="another topic"):
        check_replay_token(r, untopical, b"body-1", topic="orders.place")


def test_no_keys_configured_refuses():
    with pytest.raises(TokenError, match="no admin keys"):
        Tokens(ADMIN, ()).check("anything")


def test_a_replay_token_may_live_a_day_at_most():
    """`replay --token-ttl` took any number (1e15: a token good for ever; -5: a traceback), and the
    intake took whatever lifetime a token claimed. A day is the most it takes now, whatever made it."""
    r = Tokens(REPLAY, (KEY_NEW,))
    day = make_replay_token(r, b"body-1", topic="orders.place", ttl=MAX_REPLAY_TTL)
    assert check_replay_token(r, day, b"body-1", topic="orders.place")
    longer = r.make(ttl=MAX_REPLAY_TTL + 1, b=hashlib.sha256(b"body-1").hexdigest(), t="orders.place", n="abcd")
    with pytest.raises(TokenError, match="lives longer than a day"):
        check_replay_token(r, longer, b"body-1", topic="orders.place")
    with pytest.raises(ValueError, match="at most"):
        make_replay_token(r, b"body-1", topic="orders.place", ttl=1e15)
