"""Commerce Layer webhook signatures: base64(HMAC-SHA256(shared_secret, raw body)).

Standard library only. `verify` compares in constant time against every configured secret (key
rotation, several webhooks posting to one endpoint) and returns the *label* of the secret that
matched, never the secret itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from webhook_app.errors import InvalidSignature

_LABEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

#: the shortest webhook secret accepted: a one-character secret can be guessed by anyone
#: (Commerce Layer generates 32-character shared secrets)
MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class WebhookSecret:
    """A shared secret with a non-secret label used in logs and records."""

    label: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _LABEL.match(self.label):
            raise ValueError("a secret label is 1-64 characters of A-Z a-z 0-9 _ . -")
        if not self.secret:
            raise ValueError("a webhook secret cannot be empty")


def parse_secrets(value: str) -> tuple[WebhookSecret, ...]:
    """Parse `CL_WEBHOOK_SECRETS`: comma-separated `label:secret` or bare `secret` entries.

    A bare secret gets the positional label `secret-N` (1-based). Whitespace around entries is
    ignored. Raises ValueError (without echoing any secret) for an empty entry, a label with an
    empty secret (`main:`, what a template with an unset variable gives: never the secret
    "main:"), a secret shorter than MIN_SECRET_LENGTH, or a repeated label.
    """
    out: list[WebhookSecret] = []
    for n, raw in enumerate(value.split(","), start=1):
        entry = raw.strip()
        if not entry:
            raise ValueError(f"entry {n} is empty")
        label, sep, secret = entry.partition(":")
        secret = secret.strip()
        if sep and _LABEL.match(label):
            if not secret:
                raise ValueError(f"entry {n} ({label}) has an empty secret")
            item = WebhookSecret(label, secret.encode())
        else:
            item = WebhookSecret(f"secret-{n}", entry.encode())
        if len(item.secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"entry {n} ({item.label}): a secret must be at least {MIN_SECRET_LENGTH} characters")
        out.append(item)
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise ValueError("secret labels must be unique")
    return tuple(out)


def sign(body: bytes, *, secret: bytes | str) -> str:
    """The `X-CommerceLayer-Signature` value for `body`."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(body: bytes, *, signature: str | None, secrets: Sequence[WebhookSecret]) -> str:
    """Return the label of the secret whose signature matches, or raise InvalidSignature.

    A missing header, a header that is not base64 of 32 bytes, or no configured secret is a
    rejection. Every secret is tried (no early exit) so timing does not reveal which matched.
    """
    if not secrets:
        raise InvalidSignature("no webhook secret is configured; every delivery is refused")
    if not signature:
        raise InvalidSignature("missing X-CommerceLayer-Signature header")
    try:
        given = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSignature("X-CommerceLayer-Signature is not valid base64") from None
    if len(given) != hashlib.sha256().digest_size:
        raise InvalidSignature("X-CommerceLayer-Signature has the wrong length")
    matched: str | None = None
    for s in secrets:
        expected = hmac.new(s.secret, body, hashlib.sha256).digest()
        if hmac.compare_digest(expected, given) and matched is None:
            matched = s.label
    if matched is None:
        raise InvalidSignature("signature does not match any configured secret")
    return matched
