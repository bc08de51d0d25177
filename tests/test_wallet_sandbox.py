"""Issue 11 end to end: the sandbox sends real webhooks, the worker decides and calls it over HTTP.

The sandbox's sender posts each webhook (with the `include_resources` the policy registers) to a
recording receiver; the recorded call is verified and stored as the intake does, and the worker,
with a real SQLite store and the real client, acts on the sandbox. The sandbox refuses a save
the gateway cannot honour and makes a second entry for a card saved twice, as Commerce Layer does.
"""

from __future__ import annotations

import textwrap
import tomllib
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.sandbox import Receiver, running

from webhook_app import metrics
from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.config import bundled_policy_path
from webhook_app.events import Delivery
from webhook_app.policy import Policy, load_policy, parse_policy
from webhook_app.signing import parse_secrets
from webhook_app.store import DeliveryFilter
from webhook_app.web import create_app
from webhook_app.worker import Worker

HOOK_SECRET = "wallet-sandbox-shared-secret-0123"
CLIENT = {"client_id": "wallet-client", "client_secret": "wallet-client-secret-abcdef0123"}
CUSTOMER = {"id": "CustCaroAa", "email": "carol@example.com"}
CARD = {"card_last4": "4242", "card_exp_month": 4, "card_exp_year": 2031}
INCLUDES = load_policy(bundled_policy_path()).required_includes()


def order(oid: str, ptype: str, status: str = "placed", **source) -> dict:
    return {"id": oid, "customer": CUSTOMER["email"], "status": status, "payment_source": {"type": ptype, **source}}


def scenario(callback_url: str) -> dict:
    return {
        "sandbox": {"token_ttl": 3600, "api_limits": ["1000/60"], "endpoint_limits": ["500/10"]},
        "clients": [CLIENT],
        "markets": [{"code": "eu", "name": "Europe"}],
        "customers": [CUSTOMER],
        "orders": [
            # A returning customer paying three times with the same card: three records, one card.
            order("OrdCard001", "stripe_payments", **CARD),
            order("OrdCard002", "stripe_payments", **CARD),
            order("OrdCard003", "stripe_payments", **CARD),
            order("OrdBtPlace", "braintree_payments"),
            # Pending, but its nonce was spent elsewhere: only the gateway can tell.
            order("OrdBtSpent", "braintree_payments", "pending", gateway={"nonce_used": True}),
        ],
        "webhooks": [
            {
                "id": f"Hook{topic.split('.')[1].capitalize()}",
                "topic": topic,
                "callback_url": callback_url,
                "include_resources": INCLUDES,
                "shared_secret": HOOK_SECRET,
            }
            for topic in ("orders.place", "orders.pending")
        ],
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(receiver) -> Iterator:
    with running(scenario(receiver.url)) as srv:
        yield srv


@pytest.fixture
def env(server, receiver, sqlite_store, settings_factory):
    server.sandbox.reset()
    receiver.calls.clear()
    settings = settings_factory(
        mode="enforce",
        cl_api_base=server.api_url,
        cl_auth_url=server.auth_url,
        cl_client_id=CLIENT["client_id"],
        cl_client_secret=CLIENT["client_secret"],
    )
    client = CommerceLayerClient.from_settings(settings)

    class Env:
        store = sqlite_store
        sandbox = server.sandbox

        def deliver(self, topic: str, order_id: str, policy: Policy) -> list:
            """Fire `topic` on the order, take the webhook in as the intake does, run the worker."""
            seen = len(receiver.calls)
            server.sandbox.trigger(topic, [order_id])
            call = receiver.wait_for(seen + 1)[seen]
            delivery = Delivery.from_http(call.headers, call.body, secrets=parse_secrets(f"cl:{HOOK_SECRET}"))
            sqlite_store.record_delivery(delivery, now=1.0)
            worker = Worker(
                store=sqlite_store,
                policy=policy,
                settings=settings,
                client=client,
                observer=metrics.record_worker_event,
            )
            return worker.drain()

        def metric(self, name: str) -> float:
            """A sample as GET /metrics shows it."""
            text = create_app(settings, store=sqlite_store).test_client().get("/metrics").get_data(as_text=True)
            samples = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}
            return samples.get(name, 0.0)

        def wallet(self) -> list[dict]:
            return [w for w in server.sandbox.state.snapshot()["customer_payment_sources"]]

        def patches(self, order_id: str) -> int:
            """PATCHes of the order the sandbox answered (whatever the status)."""
            return sum(1 for r in self.requests() if r["method"] == "PATCH" and r["path"] == f"/api/orders/{order_id}")

        def requests(self) -> list[dict]:
            return server.sandbox.stats.requests()

        def latest(self, order_id: str) -> SimpleNamespace:
            """The order's latest recorded decision."""
            (d,) = sqlite_store.list_deliveries(DeliveryFilter(order_id=order_id, limit=1))
            full = sqlite_store.get_delivery(d.id)
            assert full is not None and full.decisions
            return SimpleNamespace(**full.decisions[-1])

    yield Env()
    client.close()


def test_three_orders_with_the_same_card_end_with_one_wallet_entry(env):
    bundled = load_policy(bundled_policy_path())
    for oid in ("OrdCard001", "OrdCard002", "OrdCard003"):
        (outcome,) = env.deliver("orders.place", oid, bundled)
        assert outcome.state == "done"
    sources = {o["id"]: o["payment_source"]["id"] for o in env.sandbox.state.snapshot()["orders"]}
    assert len({sources[o] for o in ("OrdCard001", "OrdCard002", "OrdCard003")}) == 3  # three records
    (entry,) = env.wallet()
    assert entry["origin_order_id"] == "OrdCard001"
    first, second, third = (env.latest(o) for o in ("OrdCard001", "OrdCard002", "OrdCard003"))
    assert first.outcome == "applied" and first.wallet_entry_id == entry["id"]
    for later in (second, third):
        assert later.guard == "card_already_in_wallet" and later.wallet_entry_id == entry["id"]
        assert "card_fingerprint" in later.reason
    assert env.patches("OrdCard002") == 0 and env.patches("OrdCard003") == 0


BRAINTREE_ON_PLACE = parse_policy(
    tomllib.loads(
        textwrap.dedent("""
        version = 1
        [default]
        action = "skip"
        [[rules]]
        name = "save-everything-on-place"
        topics = ["orders.place"]
        action = "save_payment_source"
        when = { field = "customer.id", exists = true }
    """)
    )
)


def test_a_braintree_order_placed_before_the_save_gets_no_patch_and_the_fix(env):
    assert BRAINTREE_ON_PLACE.warnings()  # policy check would have said so
    (outcome,) = env.deliver("orders.place", "OrdBtPlace", BRAINTREE_ON_PLACE)
    d = env.latest("OrdBtPlace")
    assert outcome.state == "done" and d.guard == "gateway_not_ready" and d.outcome == "guarded"
    assert "braintree_nonce_used" in d.reason and 'topics = ["orders.pending"]' in d.reason
    assert env.patches("OrdBtPlace") == 0
    assert not any(r["method"] == "PATCH" for r in env.requests())
    assert env.wallet() == []


def test_a_save_whose_answer_shows_no_new_entry_is_saved_without_entry(env):
    before = env.metric("webhook_app_saved_without_entry_total")
    env.sandbox.update_config({"wallet_save_refusal": "no_entry"})
    try:
        (outcome,) = env.deliver("orders.pending", "OrdBtSpent", load_policy(bundled_policy_path()))
    finally:
        env.sandbox.update_config({"wallet_save_refusal": "error"})
    d = env.latest("OrdBtSpent")
    assert outcome.state == "done" and d.outcome == "saved_without_entry" and d.wallet_entry_id is None
    assert "no wallet entry appeared" in d.reason and "read after []" in d.reason
    assert env.patches("OrdBtSpent") == 1  # one PATCH, one read after it, and no blind retry
    assert env.store.action_state("OrdBtSpent", "save_payment_source") == "done"
    assert env.wallet() == []
    assert env.metric("webhook_app_saved_without_entry_total") == before + 1


def test_a_failed_confirming_read_never_saves_again(env):
    env.sandbox.update_config({"wallet_save_refusal": "no_entry"})
    env.sandbox.faults.configure({"rules": [{"route": "orders.get", "error_share": 1, "requests": 1}]})
    try:
        (outcome,) = env.deliver("orders.pending", "OrdBtSpent", load_policy(bundled_policy_path()))
    finally:
        env.sandbox.update_config({"wallet_save_refusal": "error"})
        env.sandbox.faults.clear()
    d = env.latest("OrdBtSpent")
    assert outcome.state == "done" and d.outcome == "saved_without_entry"
    assert "read after [failed: " in d.reason and "503" in d.reason
    assert env.store.action_state("OrdBtSpent", "save_payment_source") == "done"
    assert env.patches("OrdBtSpent") == 1
