"""The webhook secrets the tests configure, and headers signed with them."""

from __future__ import annotations

from webhook_app.signing import sign

SECRET = "whsec-test-0123456789abcdef"
OTHER_SECRET = "whsec-other-fedcba9876543210"


def signed_headers(
    body: bytes, topic: str = "orders.place", *, secret: str = SECRET, content_type: str = "application/json"
) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "X-CommerceLayer-Topic": topic,
        "X-CommerceLayer-Signature": sign(body, secret=secret),
    }
