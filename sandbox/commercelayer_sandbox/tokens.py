"""Access tokens as Commerce Layer issues them: signed JWTs that clients decode.

The official SDK and `@commercelayer/js-auth` read the payload: the organization (`slug`, `id`)
to build the API base URL `https://<slug>.<domain>` from the issuer `https://auth.<domain>`, the
application (`kind`, `id`, `client_id`, `public`), `scope`, `test`, `exp`, `iat`, `rand`, `iss`
and, for a token asked with a market scope, `market` (https://docs.commercelayer.io/core/authentication,
js-auth's `jwtDecode` payload types). Real tokens are signed by Commerce Layer's keys; the
sandbox signs with HS512 and a secret of its own (standard library only), and checks the
signature and `exp` on every call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from typing import Any

from commercelayer_sandbox.config import SandboxConfig
from commercelayer_sandbox.model import OAuthClient
from commercelayer_sandbox.state import SandboxState

ALGORITHM = "HS512"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], *, secret: bytes, kid: str = "sandbox") -> str:
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": kid}
    signing_input = ".".join(_b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha512).digest()
    return f"{signing_input}.{_b64(signature)}"


class InvalidToken(ValueError):
    pass


def decode(token: str, *, secret: bytes) -> dict[str, Any]:
    """The claims of a token this sandbox signed; InvalidToken otherwise (expiry not checked)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("not a JWT")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
    expected = hmac.new(secret, signing_input, hashlib.sha512).digest()
    try:
        given = _unb64(parts[2])
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except ValueError as exc:
        raise InvalidToken("malformed") from exc
    if not hmac.compare_digest(given, expected) or header.get("alg") != ALGORITHM:
        raise InvalidToken("bad signature")
    if not isinstance(claims, dict):
        raise InvalidToken("malformed")
    return claims


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload, as a client reads it (for tests and tools)."""
    claims = json.loads(_unb64(token.split(".")[1]))
    if not isinstance(claims, dict):
        raise InvalidToken("malformed")
    return claims


def lifetime(now: float, ttl: float) -> tuple[int, float]:
    """(the `exp` claim, when the token really expires): `exp` is whole seconds; a sub-second
    lifetime (tests) expires at its exact time."""
    exp = math.ceil(now + ttl) if ttl < 1 else int(now + ttl)
    return exp, (now + ttl if ttl < 1 else float(exp))


def claims_for(
    cfg: SandboxConfig, client: OAuthClient, scope: str, *, now: float, exp: int, rand: float
) -> dict[str, Any]:
    """What a token issued to `client` carries (the module docstring), without `market`."""
    return {
        "organization": {
            "id": cfg.organization_id,
            "slug": cfg.organization_slug,
            "enterprise": False,
            "region": "eu-west-1",
        },
        "application": {
            "id": client.application_id or client.client_id[:10],
            "client_id": client.client_id,
            "kind": client.kind,
            "public": client.kind == "sales_channel",
        },
        "scope": scope,
        "exp": exp,
        "test": cfg.mode == "test",
        "rand": rand,
        "iat": int(now),
        "iss": f"https://auth.{cfg.domain}",
    }


def market_claim(state: SandboxState, scope: str) -> dict[str, Any] | None:
    """The `market` claim for the markets a scope names (`market:code:eu`, `market:id:ID`), if any."""
    ids = []
    with state.lock:
        for part in scope.split():
            kind, _, rest = part.partition(":")
            if kind != "market":
                continue
            how, _, value = rest.partition(":")
            if how == "code" and (m := state.market_by_code(value)) is not None:
                ids.append(m.id)
            elif how == "id" and value in state.markets:
                ids.append(value)
    if not ids:
        return None
    return {
        "id": ids,
        "stock_location_ids": [],
        "geocoder_id": None,
        "allows_external_prices": False,
    }
