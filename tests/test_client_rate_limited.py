"""The client after a 429, and a refused secret, against the sandbox over real HTTP.

Commerce Layer counts its limits per IP (FACTS.md, "Calling the API" and "Other facts"): another
process behind the same egress address can spend the budget that this client's own windows never
saw. Its 429 carries `x-ratelimit-interval` (documented; `Retry-After` is not): every call of the
budget waits that long, not only the refused one, instead of being refused again.
"""

from __future__ import annotations

import time

import pytest
import requests
from support.sandbox import CLIENT_ID, CLIENT_SECRET, Api, running

from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.config import RateLimit
from webhook_app.errors import CredentialsRefused, RetryableCommerceLayerError
from webhook_app.ratelimit import LocalRateLimiter


@pytest.mark.parametrize("retry_after", [None, 0])  # 0: the sandbox sends the time until the window has room
def test_a_429_holds_every_call_of_the_budget(retry_after):
    config = {"api_limits": ["100/60"], "endpoint_limits": ["3/1.5"], "retry_after": retry_after}
    with running(**config) as server:
        neighbour = Api(server)  # another process on the same egress address
        neighbour.get_token()
        client = CommerceLayerClient(
            api_base=server.api_url,
            auth_url=server.auth_url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            limiter=LocalRateLimiter((RateLimit(100, 60.0), RateLimit(25, 10.0))),
        )
        try:
            client.access_token()
            assert [neighbour.get("/orders/OrdStripeA").status_code for _ in range(3)] == [200] * 3
            with pytest.raises(RetryableCommerceLayerError) as refused:
                client.get_order("OrdStripeA")
            assert refused.value.answer_status == 429
            started = time.monotonic()
            assert client.get_order("OrdStripeA")["data"]["id"] == "OrdStripeA"
            assert time.monotonic() - started >= 0.9  # it waited for the window
            stats = neighbour.control("GET", "/stats").json()
            assert stats["rate_limited"]["total"] == 1  # refused once, not again
        finally:
            client.close()
            neighbour.close()


@pytest.mark.parametrize("shape", ["jsonapi", "oauth"])
def test_a_refused_secret_names_the_settings_whatever_the_token_endpoint_answers(shape):
    """How Commerce Layer's token endpoint refuses is not documented: the sandbox answers either
    way (`auth_error_shape`), and the client says the same thing for both."""
    with running(auth_error_shape=shape) as server:
        raw = requests.post(
            server.auth_url,
            json={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "wrong"},
            timeout=5,
        )
        assert raw.status_code == 401
        assert ("errors" in raw.json()) == (shape == "jsonapi")
        assert (raw.json().get("error") == "invalid_client") == (shape == "oauth")
        client = CommerceLayerClient(
            api_base=server.api_url, auth_url=server.auth_url, client_id=CLIENT_ID, client_secret="wrong"
        )
        try:
            with pytest.raises(CredentialsRefused) as refused:
                client.get_order("OrdStripeA")
        finally:
            client.close()
    text = str(refused.value)
    assert "HTTP 401 from the token endpoint" in text and "unknown client or wrong secret" in text
    assert "CL_CLIENT_SECRET" in text and "wrong" not in text.replace("wrong secret", "")
