"""Short-lived signed tokens (itsdangerous) for the admin API and for replays.

Two purposes with separate keys and salts: an admin token (`Authorization: Bearer ...`, made by
`webhook-app admin-token --ttl 1h`) and a replay token (`X-Webhook-App-Replay`, made by
`webhook-app replay` for each body it re-sends). Keys rotate: the list is oldest first, newest
last; tokens are signed with the newest and accepted under any. A token carries its own time to
live and, for a replay, the SHA-256 of the body it may replay, the topic it may be replayed under
and a nonce, so it cannot be reused for another body or another topic (Commerce Layer signs only
the body: a token good under any topic would let one captured delivery be stored many times).
Expired, forged and wrong-purpose tokens raise TokenError.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadData, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from webhook_app.errors import Unauthorized

ADMIN = "admin"
REPLAY = "replay"
REPLAY_HEADER = "X-Webhook-App-Replay"
_SALTS = {ADMIN: "webhook-app.admin.v1", REPLAY: "webhook-app.replay.v1"}
#: the longest a replay token may live (`webhook-app replay --token-ttl`, WEBHOOK_APP_REPLAY_TOKEN_TTL):
#: the intake refuses one that claims more, whatever made it
MAX_REPLAY_TTL = 86400


class TokenError(Unauthorized):
    """A token that is missing, malformed, forged, expired or made for another purpose."""


def _serializer(keys: Sequence[str], salt: str, clock: Callable[[], float]) -> URLSafeTimedSerializer:
    """A timed serializer whose signer stamps tokens with `clock` (tests control time)."""

    class _Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())

    return URLSafeTimedSerializer(list(keys), salt=salt, signer=_Signer)


@dataclass(frozen=True)
class Tokens:
    """Makes and checks tokens of one purpose."""

    purpose: str
    keys: tuple[str, ...]
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.purpose not in _SALTS:
            raise ValueError(f"unknown token purpose {self.purpose!r}")

    def _serializer(self) -> URLSafeTimedSerializer:
        if not self.keys:
            raise TokenError(f"no {self.purpose} keys are configured")
        return _serializer(self.keys, _SALTS[self.purpose], self.clock)

    def make(self, *, ttl: float, **claims: Any) -> str:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        return self._serializer().dumps({"p": self.purpose, "ttl": int(ttl), **claims})

    def check(self, token: str | None) -> dict[str, Any]:
        """The token's claims, or TokenError (never says which key, never echoes the token)."""
        if not token:
            raise TokenError(f"missing {self.purpose} token")
        if len(token) > 4096:
            raise TokenError(f"{self.purpose} token is too long")
        ser = self._serializer()
        try:
            claims, signed_at = ser.loads(token, return_timestamp=True)
        except SignatureExpired:
            raise TokenError(f"{self.purpose} token has expired") from None
        except BadData:
            raise TokenError(f"{self.purpose} token is invalid") from None
        if not isinstance(claims, dict) or claims.get("p") != self.purpose:
            raise TokenError(f"token is not a {self.purpose} token")
        age = self.clock() - signed_at.timestamp()
        if age > float(claims.get("ttl", 0)) or age < -60:
            raise TokenError(f"{self.purpose} token has expired")
        return claims


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def replay_scope(topic: str, organization: str = "") -> str:
    """What a replay token is bound to besides the body: the topic, and in agency mode the
    organization (a token made for one organization's delivery is no good at another's path)."""
    return f"{organization}/{topic}" if organization else topic


def make_replay_token(tokens: Tokens, body: bytes, *, topic: str, ttl: float) -> str:
    """A token allowing one replay of exactly `body` under `topic`."""
    if ttl > MAX_REPLAY_TTL:
        raise ValueError(f"a replay token lives at most {MAX_REPLAY_TTL} seconds")
    return tokens.make(ttl=ttl, b=body_digest(body), t=topic, n=secrets.token_hex(8))


def check_replay_token(tokens: Tokens, token: str, body: bytes, *, topic: str) -> str:
    """The replay's nonce if `token` allows replaying `body` under `topic`; TokenError otherwise."""
    claims = tokens.check(token)
    if not isinstance(claims.get("ttl"), int) or claims["ttl"] > MAX_REPLAY_TTL:
        raise TokenError("replay token lives longer than a day")
    if claims.get("b") != body_digest(body):
        raise TokenError("replay token was made for another body")
    if not isinstance(claims.get("t"), str) or not hmac.compare_digest(claims["t"].encode(), topic.encode()):
        raise TokenError("replay token was made for another topic")
    nonce = claims.get("n")
    if not isinstance(nonce, str) or not nonce:
        raise TokenError("replay token is invalid")
    return nonce
