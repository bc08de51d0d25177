"""The client against the recording fake of Commerce Layer over real HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import pytest
import requests

from webhook_app.commercelayer.client import JSONAPI, CommerceLayerClient, parse_retry_after
from webhook_app.config import RateLimit
from webhook_app.errors import NotSent, PermanentCommerceLayerError, RetryableCommerceLayerError
from webhook_app.ratelimit import WINDOW_GUARD_SECONDS, LocalRateLimiter

SCHEMA = json.loads((Path(__file__).parent / "data" / "orderUpdate.schema.json").read_text())


def client(fake, **kw):
    kw.setdefault("read_timeout", 2.0)
    return CommerceLayerClient(
        api_base=fake.url,
        auth_url=fake.url + "/oauth/token",
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        scope="market:code:eu",
        **kw,
    )


def test_patch_sends_jsonapi_with_token_and_include(fake_cl):
    fake_cl.add_order("o1")
    c = client(fake_cl)
    doc = c.update_order(
        "o1", {"_save_payment_source_to_customer_wallet": True}, include=["available_customer_payment_sources"]
    )
    patch = fake_cl.calls("orders.patch")[0]
    assert patch["headers"]["Accept"] == JSONAPI and patch["headers"]["Content-Type"].startswith(JSONAPI)
    assert patch["headers"]["Authorization"].startswith("Bearer ")
    assert patch["args"] == {"include": "available_customer_payment_sources"}
    assert patch["json"] == {
        "data": {"type": "orders", "id": "o1", "attributes": {"_save_payment_source_to_customer_wallet": True}}
    }
    jsonschema.validate(patch["json"], SCHEMA)
    assert doc["included"][0]["type"] == "customer_payment_sources"
    token = fake_cl.calls("token")[0]["json"]
    assert token == {
        "grant_type": "client_credentials",
        "client_id": "cid",
        "client_secret": fake_cl.client_secret,
        "scope": "market:code:eu",
    }
    c.close()


def test_every_patch_body_the_client_builds_validates_against_order_update(fake_cl):
    fake_cl.add_order("o1")
    c = client(fake_cl)
    c.update_order("o1", {"_save_payment_source_to_customer_wallet": True})
    c.update_order("o1", {"_customer_payment_source_id": "cps1o1"})
    for call in fake_cl.calls("orders.patch"):
        jsonschema.validate(call["json"], SCHEMA)
    with pytest.raises(jsonschema.ValidationError):  # the schema really checks types
        jsonschema.validate(
            {"data": {"type": "orders", "id": "o1", "attributes": {"_save_payment_source_to_customer_wallet": "yes"}}},
            SCHEMA,
        )
    c.close()


def test_token_is_cached_then_refreshed_before_expiry(fake_cl):
    fake_cl.add_order("o1")
    now = [1000.0]
    c = client(fake_cl, clock=lambda: now[0], token_margin=300)
    c.get_order("o1")
    c.get_order("o1")
    assert len(fake_cl.calls("token")) == 1
    now[0] += 7200 - 300 - 1
    c.get_order("o1")
    assert len(fake_cl.calls("token")) == 1
    now[0] += 2
    c.get_order("o1")
    assert len(fake_cl.calls("token")) == 2
    c.close()


def test_401_refreshes_token_once(fake_cl):
    fake_cl.add_order("o1")
    c = client(fake_cl)
    c.get_order("o1")
    fake_cl.expire_tokens()
    c.get_order("o1")
    assert [r["status"] for r in fake_cl.calls("orders.get")] == [200, 401, 200]
    assert len(fake_cl.calls("token")) == 2
    fake_cl.fail("orders.get", status=401, times=2)
    with pytest.raises(PermanentCommerceLayerError) as exc:
        c.get_order("o1")
    assert exc.value.answer_status == 401
    c.close()


def test_wrong_credentials_are_permanent(fake_cl):
    c = CommerceLayerClient(
        api_base=fake_cl.url, auth_url=fake_cl.url + "/oauth/token", client_id="cid", client_secret="wrong"
    )
    with pytest.raises(PermanentCommerceLayerError) as exc:
        c.get_order("o1")
    assert exc.value.answer_status == 401 and "wrong" not in str(exc.value)
    c.close()


@pytest.mark.parametrize(
    ("status", "retryable", "uncertain"),
    [(429, True, False), (500, True, True), (503, True, True), (422, False, False), (404, False, False)],
)
def test_status_mapping(fake_cl, status, retryable, uncertain):
    fake_cl.add_order("o1")
    fake_cl.fail("orders.patch", status=status)
    c = client(fake_cl)
    with pytest.raises((RetryableCommerceLayerError, PermanentCommerceLayerError)) as exc:
        c.update_order("o1", {"_save_payment_source_to_customer_wallet": True})
    assert exc.value.retryable is retryable and exc.value.uncertain is uncertain
    assert exc.value.answer_status == status
    c.close()


def test_permanent_error_keeps_commerce_layer_detail(fake_cl):
    fake_cl.add_order("g1", guest=True)
    c = client(fake_cl)
    with pytest.raises(PermanentCommerceLayerError) as exc:
        c.update_order("g1", {"_save_payment_source_to_customer_wallet": True})
    assert "payment source cannot be saved" in str(exc.value)
    assert exc.value.errors[0]["code"] == "VALIDATION_ERROR"
    c.close()


def test_retry_after_is_read_from_429(fake_cl):
    fake_cl.add_order("o1")
    fake_cl.fail("orders.patch", status=429, headers={"Retry-After": "7"})
    c = client(fake_cl)
    with pytest.raises(RetryableCommerceLayerError) as exc:
        c.update_order("o1", {"_save_payment_source_to_customer_wallet": True})
    assert exc.value.retry_after == 7
    c.close()


def test_read_timeout_is_retryable_and_uncertain_for_writes(fake_cl):
    fake_cl.add_order("o1")
    fake_cl.hang("orders.patch", 1.0)
    c = client(fake_cl, read_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(RetryableCommerceLayerError) as exc:
        c.update_order("o1", {"_save_payment_source_to_customer_wallet": True})
    assert time.monotonic() - started < 0.9
    assert exc.value.uncertain
    fake_cl.hang("orders.get", 1.0)
    with pytest.raises(RetryableCommerceLayerError) as exc:
        c.get_order("o1")
    assert not exc.value.uncertain
    c.close()


def test_connection_refused_is_retryable():
    with requests.Session() as s:
        c = CommerceLayerClient(
            api_base="http://127.0.0.1:9",
            auth_url="http://127.0.0.1:9/oauth/token",
            client_id="a",
            client_secret="b",
            connect_timeout=0.5,
            session=s,
        )
        with pytest.raises(RetryableCommerceLayerError):
            c.get_order("o1")


def test_ids_are_checked_before_they_go_into_urls(fake_cl):
    c = client(fake_cl)
    with pytest.raises(PermanentCommerceLayerError):
        c.get_order("../oauth/token")
    assert fake_cl.requests == []
    c.close()


def test_rate_limit_spaces_calls(fake_cl):
    fake_cl.add_order("o1")
    slept = []
    now = [0.0]

    def sleep(s):
        slept.append(s)
        now[0] += s

    c = client(
        fake_cl, limiter=LocalRateLimiter([RateLimit(2, 10)], clock=lambda: now[0]), clock=lambda: now[0], sleep=sleep
    )
    for _ in range(5):
        c.get_order("o1")
    # calls 3 and 5 each wait for a slot; 2 per 10 s, each window kept a guard longer
    assert slept == [10 + WINDOW_GUARD_SECONDS, 10 + WINDOW_GUARD_SECONDS]
    c.close()


def test_a_write_is_confirmed_after_the_wait_for_its_slot_and_not_sent_if_refused(fake_cl):
    """The caller's `confirm` is asked once the rate-limit slot has come (the wait may outlast
    the caller's lease): False raises NotSent and nothing reaches Commerce Layer."""
    fake_cl.add_order("o1")
    now = [0.0]
    asked_at = []

    def sleep(s):
        now[0] += s

    def confirm(answer):
        def ask():
            asked_at.append(now[0])
            return answer

        return ask

    c = client(
        fake_cl, limiter=LocalRateLimiter([RateLimit(1, 10)], clock=lambda: now[0]), clock=lambda: now[0], sleep=sleep
    )
    c.update_order("o1", {"_save_payment_source_to_customer_wallet": True}, confirm=confirm(True))
    with pytest.raises(NotSent):
        c.update_order("o1", {"_save_payment_source_to_customer_wallet": True}, confirm=confirm(False))
    assert asked_at == [0.0, 10 + WINDOW_GUARD_SECONDS]  # the second asked after its wait
    assert len(fake_cl.calls("orders.patch")) == 1
    c.close()


def test_parse_retry_after():
    assert parse_retry_after("3", now=0) == 3
    assert parse_retry_after(None, now=0) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == 10
    assert parse_retry_after("soon", now=0) is None


def test_repr_hides_secret(fake_cl):
    c = client(fake_cl)
    assert fake_cl.client_secret not in repr(c)
    c.close()
