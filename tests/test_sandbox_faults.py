"""Rate limits and fault injection, over real HTTP and on the objects with an injected clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests
from commercelayer_sandbox.config import Window
from commercelayer_sandbox.errors import SandboxError
from commercelayer_sandbox.faults import Faults
from commercelayer_sandbox.ratelimit import SlidingWindowLimiter
from support.sandbox import Api, running


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator:
    with running() as srv:
        yield srv


@pytest.fixture
def api(server) -> Iterator[Api]:
    client = Api(server)
    assert client.control("POST", "/reset", {}).status_code == 200
    client.control("PUT", "/config", {"check_responses": True})
    client.get_token()
    yield client
    client.control("DELETE", "/faults")
    client.close()


def faults(api, *rules, seed=7, sender=None) -> None:
    spec = {"seed": seed, "rules": list(rules)}
    if sender:
        spec["sender"] = sender
    r = api.control("PUT", "/faults", spec)
    assert r.status_code == 200, r.text


# -- rate limits ---------------------------------------------------------------------------


def test_limiter_sliding_window_with_fake_clock():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(clock)
    windows = [(("api",), Window(3, 10.0))]
    assert [limiter.hit(windows).remaining for _ in range(3)] == [2, 1, 0]
    refused = limiter.hit(windows)
    assert not refused.allowed and refused.retry_in == pytest.approx(10.0)
    clock.now += 5
    assert not limiter.hit(windows).allowed  # refused requests do not count, but the window is full
    clock.now += 5.001
    assert limiter.hit(windows).allowed  # the first three slid out


def test_limiter_reports_the_tightest_window():
    limiter = SlidingWindowLimiter(FakeClock())
    v = limiter.hit([(("api",), Window(100, 60)), (("endpoint", "orders.get"), Window(2, 10))])
    assert (v.limit, v.interval, v.remaining) == (2, 10, 1)
    assert v.headers() == {
        "x-ratelimit-limit": "2",
        "x-ratelimit-interval": "10",
        "x-ratelimit-remaining": "1",
    }


def test_rate_limit_headers_on_every_answer(api):
    r = api.get("/orders/OrdStripeA")
    assert r.headers["x-ratelimit-limit"] == "25" and r.headers["x-ratelimit-interval"] == "10"
    assert int(r.headers["x-ratelimit-remaining"]) == 24
    r = api.get("/orders/NoSuchOrd")
    assert r.status_code == 404 and "x-ratelimit-remaining" in r.headers
    token = api.session.post(
        api.server.auth_url,
        json={"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
    )
    assert token.status_code == 401 and token.headers["x-ratelimit-limit"] == "30"
    assert token.headers["x-ratelimit-interval"] == "60"


def test_endpoint_limit_429_then_window_recovers(api):
    api.control("PUT", "/config", {"endpoint_limits": ["3/0.5"], "api_limits": ["100/60"]})
    statuses = [api.get("/orders/OrdStripeA").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    r = api.get("/orders/OrdStripeA")
    assert r.status_code == 429
    body = r.json()["errors"][0]
    assert body["code"] == "TOO_MANY_REQUESTS" and body["status"] == "429"
    assert r.headers["x-ratelimit-remaining"] == "0" and r.headers["x-ratelimit-limit"] == "3"
    assert "Retry-After" not in r.headers  # undocumented by Commerce Layer: off by default
    assert api.get("/orders").status_code == 200  # another endpoint has its own window
    time.sleep(0.55)
    assert api.get("/orders/OrdStripeA").status_code == 200
    stats = api.control("GET", "/stats").json()
    assert stats["rate_limited"]["total"] == 2 and stats["rate_limited"]["endpoint"] == 2
    assert stats["by_route"]["orders.get"]["429"] == 2


@pytest.mark.parametrize("count_refused", [False, True])
def test_refused_requests_count_only_when_so_configured(api, count_refused):
    """Whether Commerce Layer counts a refused request is undocumented: configurable, and counted
    a client that keeps calling while refused stays refused."""
    api.control(
        "PUT",
        "/config",
        {"endpoint_limits": ["3/1"], "api_limits": ["100/60"], "rate_limit_count_refused": count_refused},
    )
    assert [api.get("/orders/OrdStripeA").status_code for _ in range(3)] == [200] * 3
    time.sleep(0.6)
    assert [api.get("/orders/OrdStripeA").status_code for _ in range(3)] == [429] * 3
    time.sleep(0.55)  # the three admitted slid out; the three refused did not
    assert api.get("/orders/OrdStripeA").status_code == (429 if count_refused else 200)


def test_overall_and_auth_limits_and_retry_after(api):
    api.control(
        "PUT",
        "/config",
        {"api_limits": ["2/30"], "endpoint_limits": [], "auth_limits": ["1/30"], "retry_after": 7},
    )
    assert api.get("/orders").status_code == 200
    assert api.get("/orders/OrdStripeA").status_code == 200
    r = api.get("/webhooks")
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    ok = api.session.post(
        api.server.auth_url,
        json={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client-id",
            "client_secret": "sandbox-client-secret",
        },
    )
    again = api.session.post(
        api.server.auth_url,
        json={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client-id",
            "client_secret": "sandbox-client-secret",
        },
    )
    assert (ok.status_code, again.status_code) == (200, 429)
    stats = api.control("GET", "/stats").json()["rate_limited"]
    assert stats == {"total": 2, "api": 1, "auth": 1}


# -- faults -----------------------------------------------------------------------------------


def test_latency(api):
    faults(api, {"route": "orders.get", "latency_ms": 300})
    started = time.monotonic()
    assert api.get("/orders/OrdStripeA").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert api.get("/orders").status_code == 200  # other routes are not slowed
    assert time.monotonic() - started < 0.25


def test_error_share_is_deterministic_with_a_seed(api):
    api.control("PUT", "/config", {"endpoint_limits": []})

    def run() -> list[int]:
        faults(api, {"route": "orders.get", "error_share": 0.5}, seed=42)
        return [api.get("/orders/OrdStripeA").status_code for _ in range(16)]

    first, second = run(), run()
    assert first == second
    assert set(first) == {200, 503}
    faults(api, {"route": "orders.get", "error_share": 0.5}, seed=43)
    assert [api.get("/orders/OrdStripeA").status_code for _ in range(16)] != first
    r = api.get("/orders")
    assert r.status_code == 200


def test_error_status_and_errors_shape(api):
    faults(api, {"route": "orders", "error_share": 1.0, "error_status": 502})
    r = api.get("/orders/OrdStripeA")
    assert r.status_code == 502 and r.json()["errors"][0]["status"] == "502"
    assert api.get("/orders").status_code == 502  # "orders" matches every orders.* route


def test_hang_outlasts_a_client_timeout_then_applies(api):
    faults(api, {"route": "orders.patch", "hang_share": 1.0, "hang_seconds": 0.6, "requests": 1})
    with pytest.raises(requests.ReadTimeout):
        api.session.patch(
            api.server.api_url + "/orders/OrdStripeA",
            headers=api.headers(),
            timeout=0.2,
            json={"data": {"type": "orders", "id": "OrdStripeA", "attributes": {"reference": "late"}}},
        )
    time.sleep(0.6)
    attrs = api.get("/orders/OrdStripeA").json()["data"]["attributes"]
    assert attrs["reference"] == "late"  # the slow server still made the change


def test_dropped_connection_is_a_connection_error(api):
    faults(api, {"route": "orders.get", "drop_share": 1.0, "requests": 1})
    with pytest.raises(requests.ConnectionError):
        api.get("/orders/OrdStripeA", timeout=5)
    assert api.get("/orders/OrdStripeA").status_code == 200  # the spell is over
    logged = api.control("GET", "/requests?route=orders.get").json()["requests"]
    assert logged[0]["status"] is None and "drop" in logged[0]["faults"]
    assert api.control("GET", "/stats").json()["faults"]["drop"] == 1


def test_apply_then_fail_makes_the_change_and_answers_503(api):
    faults(api, {"route": "orders.patch", "error_share": 1.0, "apply_then_fail": True, "requests": 1})
    r = api.patch_order("OrdStripeA", {"_save_payment_source_to_customer_wallet": True})
    assert r.status_code == 503
    wallet = api.get("/customers/CustAliceA/customer_payment_sources").json()["data"]
    assert len(wallet) == 1  # the ambiguous outcome: it was saved
    r = api.patch_order("OrdStripeA", {"_save_payment_source_to_customer_wallet": True})
    assert r.status_code == 200  # a blind retry makes a duplicate
    assert api.control("GET", "/stats").json()["wallet"]["duplicates"] == 1


def test_apply_then_drop(api):
    faults(api, {"route": "orders.patch", "drop_share": 1.0, "apply_then_fail": True, "requests": 1})
    with pytest.raises(requests.ConnectionError):
        api.patch_order("OrdStripeA", {"reference": "dropped-but-done"})
    assert api.get("/orders/OrdStripeA").json()["data"]["attributes"]["reference"] == "dropped-but-done"


def test_spell_for_n_requests_and_for_t_seconds(api):
    faults(api, {"route": "orders.get", "error_share": 1.0, "requests": 2})
    assert [api.get("/orders/OrdStripeA").status_code for _ in range(3)] == [503, 503, 200]
    faults(api, {"route": "orders.get", "error_share": 1.0, "seconds": 0.3})
    assert api.get("/orders/OrdStripeA").status_code == 503
    time.sleep(0.35)
    assert api.get("/orders/OrdStripeA").status_code == 200
    assert api.control("GET", "/faults").json()["rules"] == []


def test_fault_specs_are_checked(api):
    r = api.control("PUT", "/faults", {"rules": [{"route": "orders.get", "error_share": 2}]})
    assert r.status_code == 400 and "error_share" in r.json()["errors"][0]["detail"]
    r = api.control("PUT", "/faults", {"rules": [{"route": "x", "erorr_share": 0.5}]})
    assert r.status_code == 400
    with pytest.raises(SandboxError):
        Faults().configure({"rules": [{"drop_share": 0.6, "error_share": 0.6}]})


def test_fault_spells_with_a_fake_clock():
    clock = FakeClock()
    f = Faults(clock)
    f.configure({"rules": [{"route": "token", "error_share": 1, "seconds": 5}]})
    assert f.decide("token").error_status == 503
    assert f.decide("orders.get").error_status is None
    clock.now += 5
    assert f.decide("token").error_status is None


def test_stopping_the_server_releases_hanging_requests():
    with running() as server:
        api = Api(server)
        api.get_token()
        faults(api, {"route": "orders.get", "hang_share": 1.0, "hang_seconds": 30})
        outcome: list[object] = []

        def call() -> None:
            try:
                outcome.append(api.get("/orders/OrdStripeA", timeout=10).status_code)
            except requests.ConnectionError as exc:
                outcome.append(exc)

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.2)
        started = time.monotonic()
        server.stop()
        t.join(10)
        api.close()
    assert time.monotonic() - started < 3
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)
