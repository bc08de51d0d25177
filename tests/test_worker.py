"""The worker with a real SQLite store, the recording fake of Commerce Layer over HTTP and a hand clock."""

from __future__ import annotations

import random
import textwrap
import tomllib

import pytest
from support import SECRET, signed_headers
from support.builders import order_body

from webhook_app.backoff import retry_delay
from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.config import bundled_policy_path
from webhook_app.events import Delivery, Event
from webhook_app.policy import load_policy, parse_policy, wallet
from webhook_app.signing import parse_secrets
from webhook_app.store import ClaimHolder, DeliveryFilter
from webhook_app.worker import Worker

SECRETS = parse_secrets(f"main:{SECRET}")


@pytest.fixture
def env(fake_cl, sqlite_store, settings_factory, clock):
    settings = settings_factory(
        mode="enforce",
        cl_api_base=fake_cl.url,
        cl_client_id=fake_cl.client_id,
        cl_client_secret=fake_cl.client_secret,
        cl_auth_url=fake_cl.url + "/oauth/token",
        cl_read_timeout=0.5,
        max_attempts=4,
        retry_base_seconds=2,
        retry_max_seconds=60,
    )
    client = CommerceLayerClient.from_settings(settings)

    class Env:
        fake = fake_cl
        store = sqlite_store

        def __init__(self):
            self.settings = settings
            self.clock = clock
            self.client = client

        def worker(self, policy=None, name="w1", **overrides):
            s = self.settings.with_overrides(**overrides)
            return Worker(
                store=sqlite_store,
                policy=policy or load_policy(bundled_policy_path()),
                settings=s,
                client=None if s.shadow else client,
                clock=clock,
                worker_id=name,
                rng=random.Random(1),
            )

        def deliver(self, order_id="o1", topic="orders.place", **kw):
            body = order_body(order_id, **kw)
            d = Delivery.from_http(signed_headers(body, topic), body, secrets=SECRETS)
            return sqlite_store.record_delivery(d, now=clock())

        def decisions(self, delivery_id):
            return sqlite_store.get_delivery(delivery_id).decisions

    yield Env()
    client.close()


def policy(text):
    return parse_policy(tomllib.loads(textwrap.dedent(text)))


SAVE_ALL = policy("""
    version = 1
    [default]
    action = "save_payment_source"
""")


def test_save_is_applied_once_and_records_wallet_entry(env):
    env.fake.add_order("o1", source_id="psAAAA1111")
    rec = env.deliver("o1")
    outcomes = env.worker().drain()
    assert [o.outcome for o in outcomes] == ["applied"]
    patches = env.fake.patches()
    assert len(patches) == 1
    assert patches[0]["json"]["data"]["attributes"] == {"_save_payment_source_to_customer_wallet": True}
    assert patches[0]["args"]["include"] == (
        "available_customer_payment_sources,available_customer_payment_sources.payment_source"
    )
    d = env.decisions(rec.delivery_id)[0]
    assert d["outcome"] == "applied" and d["rule"] == "save-registered-customer-source"
    assert d["wallet_entry_id"] == env.fake.orders["o1"].wallet[0]["id"]


def test_redeliveries_and_other_topics_make_one_patch_per_order(env):
    env.fake.add_order("o1", source_id="psAAAA1111")
    for _ in range(3):
        env.deliver("o1")
    env.deliver("o1", topic="orders.approve")
    env.deliver("o1", topic="orders.pay", status="approved")
    outcomes = env.worker(policy=SAVE_ALL).drain()
    assert len(env.fake.patches()) == 1
    assert sorted(o.outcome for o in outcomes) == ["applied", "guarded", "guarded"]
    assert {o.decision.guard for o in outcomes if o.outcome == "guarded"} == {"already_flagged"}


@pytest.mark.parametrize(
    ("kw", "guard"),
    [
        ({"guest": True}, "guest_order"),
        ({"customer_id": None}, "no_customer"),
        ({"source_type": "wire_transfers"}, "no_wallet_flow"),
    ],
)
def test_guarded_orders_are_never_flagged(env, kw, guard):
    rec = env.deliver("o1", **kw)
    [o] = env.worker(policy=SAVE_ALL).drain()
    assert o.outcome == "guarded" and o.decision.guard == guard
    assert env.fake.requests == []
    assert env.decisions(rec.delivery_id)[0]["guard"] == guard


def test_shadow_mode_decides_and_records_but_never_calls(env):
    rec = env.deliver("o1")
    [o] = env.worker(mode="shadow").drain()
    assert o.outcome == "shadow" and env.fake.requests == []
    d = env.decisions(rec.delivery_id)[0]
    assert d["mode"] == "shadow" and d["action"] == "save_payment_source"


def test_retryable_failure_backs_off_then_succeeds(env):
    env.fake.add_order("o1")
    env.fake.fail("orders.patch", status=503)
    rec = env.deliver("o1")
    w = env.worker()
    [o] = w.drain()
    assert o.state == "retry" and "503" in o.error
    job = env.store.get_delivery(rec.delivery_id).job
    assert job["state"] == "pending" and 1 <= job["next_attempt_at"] - env.clock() <= 2
    assert w.drain() == []  # not due yet
    env.clock.advance(2)
    [o] = w.drain()
    assert o.outcome == "applied"
    assert len(env.fake.patches()) == 1 and len(env.fake.calls("orders.patch")) == 2


def test_retry_after_is_honoured(env):
    env.fake.add_order("o1")
    env.fake.fail("orders.patch", status=429, headers={"Retry-After": "30"})
    rec = env.deliver("o1")
    env.worker().drain()
    job = env.store.get_delivery(rec.delivery_id).job
    assert job["next_attempt_at"] - env.clock() >= 30


def test_permanent_error_dead_letters_with_detail_and_requeue_works(env):
    env.fake.add_order("o1")
    env.fake.fail(
        "orders.patch",
        status=422,
        body={
            "errors": [{"title": "Invalid", "detail": "source is expired", "code": "VALIDATION_ERROR", "status": "422"}]
        },
    )
    rec = env.deliver("o1")
    [o] = env.worker().drain()
    assert o.state == "dead"
    got = env.store.get_delivery(rec.delivery_id)
    assert got.job["state"] == "dead" and "source is expired" in got.job["last_error"]
    assert got.decisions[-1]["outcome"] == "failed"
    assert env.store.requeue(got.job["id"], now=env.clock())
    [o] = env.worker().drain()
    assert o.outcome == "applied" and len(env.fake.patches()) == 1


def test_attempts_are_limited_then_dead_letter(env):
    env.fake.add_order("o1")
    env.fake.fail("orders.patch", status=500, times=10)
    rec = env.deliver("o1")
    w = env.worker()
    for _ in range(4):
        w.drain()
        env.clock.advance(120)
    got = env.store.get_delivery(rec.delivery_id)
    assert got.job["state"] == "dead" and got.job["attempts"] == 4
    assert "attempts exhausted" in got.job["last_error"]
    assert len(env.fake.calls("orders.patch")) == 4


def test_uncertain_failure_is_checked_before_writing_again(env):
    env.fake.add_order("o1", source_id="psAAAA1111")
    env.fake.fail("orders.patch", status=502, apply_first=True)  # applied, but we see a 502
    rec = env.deliver("o1")
    w = env.worker()
    w.drain()
    env.clock.advance(5)
    [o] = w.drain()
    assert o.outcome == "applied"
    assert len(env.fake.orders["o1"].wallet) == 1  # saved once
    assert len(env.fake.calls("orders.patch")) == 1  # never written twice
    assert env.fake.calls("orders.get")[0]["args"]["include"] == (
        "payment_source,available_customer_payment_sources,available_customer_payment_sources.payment_source"
    )
    assert env.decisions(rec.delivery_id)[-1]["wallet_entry_id"] == env.fake.orders["o1"].wallet[0]["id"]


def test_timeout_after_apply_is_checked_before_writing_again(env):
    env.fake.add_order("o1", source_id="psAAAA1111")
    env.fake.hang("orders.patch", 1.0, apply_first=True)
    env.deliver("o1")
    w = env.worker()
    [o] = w.drain()
    assert o.state == "retry"
    job = env.store.list_deliveries(DeliveryFilter())[0].job
    assert job["next_attempt_at"] - env.clock() >= env.settings.cl_read_timeout  # waits out a late apply
    env.clock.advance(5)
    [o] = w.drain()
    assert o.outcome == "applied"
    # the PATCH was applied but answered after our read timeout; the retry must see that and not PATCH again
    assert len(env.fake.orders["o1"].wallet) == 1
    assert len(env.fake.calls("orders.patch")) == 1


def test_worker_killed_mid_patch_next_worker_looks_first(env):
    env.fake.add_order("o1", source_id="psAAAA1111")
    rec = env.deliver("o1")
    dead = env.worker(name="dead")
    job = env.store.claim_job(worker="dead", lease_seconds=60, now=env.clock())
    env.store.begin_action(
        ClaimHolder("o1", worker="dead", job_id=job.id, now=env.clock(), lease_seconds=60), "save_payment_source"
    )
    env.client.update_order("o1", {"_save_payment_source_to_customer_wallet": True})  # reached CL, then died
    assert dead.drain() == []
    env.clock.advance(61)
    [o] = env.worker(name="w2").drain()
    assert o.outcome == "applied"
    assert len(env.fake.orders["o1"].wallet) == 1 and len(env.fake.calls("orders.patch")) == 1
    assert [a["outcome"] for a in env.store.get_delivery(rec.delivery_id).attempts] == ["lease_expired", "applied"]


def test_busy_order_is_retried_without_using_attempts(env):
    env.fake.add_order("o1")
    env.deliver("o1")
    env.store.begin_action(
        ClaimHolder("o1", worker="other", job_id=99, now=env.clock(), lease_seconds=60), "save_payment_source"
    )
    [o] = env.worker().drain()
    assert o.state == "retry" and o.error == "busy" and env.fake.requests == []


REUSE = policy("""
    version = 1
    [default]
    action = "skip"
    [[rules]]
    name = "reuse"
    action = "use_wallet_source"
    strategy = "newest"
""")


def test_use_wallet_source_with_wallet_in_body(env):
    order = env.fake.add_order("o1", source_id="psNEW")
    order.wallet = [
        {"id": "w-a", "source_id": "ps-a", "source_type": "stripe_payments", "created_at": "2025"},
        {"id": "w-b", "source_id": "ps-b", "source_type": "stripe_payments", "created_at": "2026"},
    ]
    rec = env.deliver(
        "o1",
        source_id="psNEW",
        wallet=[
            {"id": "w-a", "source_id": "ps-a", "created_at": "2025"},
            {"id": "w-b", "source_id": "ps-b", "created_at": "2026"},
        ],
    )
    [o] = env.worker(policy=REUSE).drain()
    assert o.outcome == "applied"
    [patch] = env.fake.patches()
    assert patch["json"]["data"]["attributes"] == {"_customer_payment_source_id": "w-b"}
    assert env.decisions(rec.delivery_id)[0]["wallet_entry_id"] == "w-b"


def test_use_wallet_source_fetches_wallet_when_body_lacks_it(env):
    order = env.fake.add_order("o1")
    order.wallet = [{"id": "w-a", "source_id": "ps-a", "source_type": "stripe_payments", "created_at": "2025"}]
    env.deliver("o1")
    [o] = env.worker(policy=REUSE).drain()
    assert o.outcome == "applied"
    assert env.fake.calls("orders.get")[0]["args"]["include"] == (
        "payment_source,available_customer_payment_sources,available_customer_payment_sources.payment_source"
    )
    assert env.fake.patches()[0]["json"]["data"]["attributes"] == {"_customer_payment_source_id": "w-a"}
    env.fake.add_order("o2")
    env.deliver("o2")
    [o] = env.worker(policy=REUSE).drain()
    assert o.outcome == "guarded" and o.decision.guard == "no_wallet_entry"


def test_retry_delay_grows_with_jitter_and_honours_retry_after():
    rng = random.Random(7)
    delays = [retry_delay(n, base=2, cap=100, rng=rng) for n in range(1, 9)]
    for n, d in enumerate(delays, start=1):
        ceiling = min(100, 2 * 2 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling
    assert retry_delay(1, base=2, cap=100, retry_after=40, rng=rng) >= 40
    assert retry_delay(1, base=2, cap=100, retry_after=4000, rng=rng) <= 100


def test_a_worker_that_dies_after_the_patch_leaves_an_applied_decision(env):
    """The PATCH succeeded and the worker died before recording it: the next attempt reads the
    order, sees the wallet entry and records `applied` (not `already_flagged`)."""
    env.fake.add_order("o1", source_id="psAAAA1111")
    rec = env.deliver("o1")
    job = env.store.claim_job(worker="dead", lease_seconds=60, now=env.clock())
    env.store.begin_action(
        ClaimHolder("o1", worker="dead", job_id=job.id, now=env.clock(), lease_seconds=60), "save_payment_source"
    )
    env.client.update_order(
        "o1", {"_save_payment_source_to_customer_wallet": True}, include=["available_customer_payment_sources"]
    )
    env.clock.advance(61)
    [o] = env.worker(name="w2").drain()
    assert o.outcome == "applied"
    decisions = env.decisions(rec.delivery_id)
    assert [d["outcome"] for d in decisions] == ["applied"]
    assert env.store.action_state("o1", "save_payment_source") == "done"


# --- documented answers: linkage only where included ------------------------------------------


def _saved_entry(env, order_id, source_id):
    """Put the order's payment source in its wallet at the fake, as an earlier save would have."""
    order = env.fake.orders[order_id]
    order.wallet.append(
        {
            "id": f"w-{order_id}",
            "source_id": source_id,
            "source_type": "stripe_payments",
            "token": f"pm_{source_id}",
            "created_at": "2026-01-01T00:00:00.000Z",
        }
    )
    return order.wallet[-1]["id"]


def test_entry_without_linkage_is_recognised_by_gateway_token(env):
    """The webhook named available_customer_payment_sources but not its .payment_source path."""
    env.fake.add_order("o1", source_id="psAAAA1111")
    entry = _saved_entry(env, "o1", "psAAAA1111")
    rec = env.deliver("o1", source_id="psAAAA1111", wallet=[{"id": entry, "source_id": "psAAAA1111", "linked": False}])
    [o] = env.worker(policy=SAVE_ALL).drain()
    assert o.outcome == "guarded" and o.decision.guard == "already_in_wallet"
    assert "matched by token" in o.decision.reason
    assert env.fake.requests == []  # the body sufficed
    assert env.decisions(rec.delivery_id)[0]["wallet_entry_id"] == entry


def test_unlinked_entries_of_other_cards_do_not_stop_a_save(env):
    env.fake.add_order("o1", source_id="psAAAA1111")
    env.fake.orders["o1"].wallet.append(
        {
            "id": "w-old",
            "source_id": "ps-old",
            "source_type": "stripe_payments",
            "created_at": "2025-01-01T00:00:00.000Z",
        }
    )
    env.deliver("o1", source_id="psAAAA1111", wallet=[{"id": "w-old", "source_id": "ps-old", "linked": False}])
    [o] = env.worker(policy=SAVE_ALL).drain()
    assert o.outcome == "applied"
    assert env.fake.calls("orders.get") == []  # tokens differ: known not to be in the wallet, no read
    assert len(env.fake.orders["o1"].wallet) == 2
    assert o.decision.wallet_entry_id == env.fake.orders["o1"].wallet[-1]["id"]


@pytest.mark.parametrize("wallet_in_body", [None, "unlinked-no-token"])
def test_wallet_the_body_cannot_tell_is_read_before_saving(env, wallet_in_body):
    """Not included, or included without linkage and tokens: never taken as "not in the wallet"."""
    env.fake.add_order("o1", source_id="psAAAA1111")
    entry = _saved_entry(env, "o1", "psAAAA1111")
    wallet = None if wallet_in_body is None else [{"id": entry, "linked": False, "token": None}]
    env.deliver("o1", source_id="psAAAA1111", wallet=wallet)
    [o] = env.worker(policy=SAVE_ALL).drain()
    assert o.outcome == "guarded" and o.decision.guard == "already_in_wallet"
    assert env.fake.patches() == []
    [read] = env.fake.calls("orders.get")
    assert "available_customer_payment_sources.payment_source" in read["args"]["include"].split(",")
    assert len(env.fake.orders["o1"].wallet) == 1


def test_use_wallet_source_retry_recognises_the_orders_own_copy_by_token(env):
    """Using an entry gives the order a payment source record of its own: the token tells."""
    order = env.fake.add_order("o1", source_id="psNEW")
    order.wallet = [{"id": "w-a", "source_id": "ps-a", "source_type": "stripe_payments", "created_at": "2025"}]
    env.fake.fail("orders.patch", status=502, apply_first=True)
    env.deliver("o1", source_id="psNEW", wallet=[{"id": "w-a", "source_id": "ps-a", "created_at": "2025"}])
    w = env.worker(policy=REUSE)
    [o] = w.drain()
    assert o.state == "retry"
    assert env.fake.orders["o1"].source_id != "ps-a"  # a record of its own, not the entry's
    env.clock.advance(30)
    [o] = w.drain()
    assert o.outcome == "applied" and "already applied" in o.decision.reason
    assert len(env.fake.calls("orders.patch")) == 1


def test_uncertainty_survives_a_failed_read(env):
    """A save timed out (maybe applied); the look before writing again fails (429): the next attempt
    must still look, not trust a body that showed an empty wallet and save a second time."""
    env.fake.add_order("o1", source_id="psAAAA1111")
    env.fake.hang("orders.patch", 1.0, apply_first=True)  # applied, answered after the read timeout
    env.fake.fail("orders.get", status=429)  # the first look is refused
    env.deliver("o1", source_id="psAAAA1111", wallet=[])  # the body: an empty wallet, at event time
    w = env.worker(policy=SAVE_ALL)
    [o] = w.drain()
    assert o.state == "retry"  # the PATCH timed out
    env.clock.advance(30)
    [o] = w.drain()
    assert o.state == "retry" and "429" in o.error  # the look failed
    env.clock.advance(30)
    [o] = w.drain()
    assert o.outcome == "applied" and "already applied" in o.decision.reason
    assert len(env.fake.calls("orders.patch")) == 1 and len(env.fake.orders["o1"].wallet) == 1


# --- scaled out: one card, one entry; one reuse per order ----------------------------------------
def _card(env, order_id="o1", **kw):
    """The order's customer and card key, as the worker claims them."""
    event = Event.from_body("orders.place", order_body(order_id, **kw))
    return event.customer_id, wallet.card_key(event.payment_source, wallet.DEFAULT_MATCH)


def test_a_save_waits_while_another_order_saves_the_same_card(env):
    env.fake.add_order("o1", source_id="psAAAA1111")
    rec = env.deliver("o1", source_id="psAAAA1111", wallet=[])
    customer, card = _card(env, "o1", source_id="psAAAA1111")
    assert card  # the card is identified (by its gateway token here)
    held = env.store.claim_card(
        ClaimHolder("o9", worker="w9", job_id=99, now=env.clock(), lease_seconds=60), customer, card
    )
    assert held.status == "acquired"
    [o] = env.worker(policy=SAVE_ALL).drain()
    assert o.state == "retry" and o.error == "busy" and env.fake.requests == []
    got = env.store.get_delivery(rec.delivery_id)
    assert got.job["attempts"] == 0 and "o9" in got.job["last_error"]  # waiting used no attempt
    assert env.store.action_state("o1", "save_payment_source") == "open"  # the order's claim given back


def test_a_card_saved_before_is_read_before_saving_again(env):
    """The body's wallet may predate another order's save of the card: once a save of it was
    claimed, the worker reads the wallet before deciding."""
    order = env.fake.add_order("o1", source_id="psAAAA1111")
    order.wallet = [{"id": "w-x", "source_id": "psAAAA1111", "source_type": "stripe_payments", "created_at": "2026"}]
    rec = env.deliver("o1", source_id="psAAAA1111", wallet=[])  # the body: an empty wallet
    customer, card = _card(env, "o1", source_id="psAAAA1111")
    env.store.begin_action(
        ClaimHolder("o9", worker="w9", job_id=99, now=env.clock(), lease_seconds=60), "save_payment_source"
    )
    env.store.claim_card(ClaimHolder("o9", worker="w9", job_id=99, now=env.clock(), lease_seconds=60), customer, card)
    env.store.release_action(
        ClaimHolder("o9", worker="w9", job_id=99, now=env.clock(), lease_seconds=60),
        "save_payment_source",
        uncertain=False,
    )
    [o] = env.worker(policy=SAVE_ALL).drain()
    assert o.outcome == "guarded" and o.decision.guard == "already_in_wallet"
    assert env.fake.calls("orders.patch") == [] and len(env.fake.calls("orders.get")) == 1
    assert env.decisions(rec.delivery_id)[-1]["wallet_entry_id"] == "w-x"


def test_an_uncertain_use_is_settled_by_the_orders_source_whichever_job_chose_it(env):
    """The first job's use of w-a may have been applied; the second job chose the newer w-b. A read
    showing w-a as the order's source ends the action: w-b is never sent."""
    order = env.fake.add_order("o1", source_id="psNEW")
    order.wallet = [{"id": "w-a", "source_id": "ps-a", "source_type": "stripe_payments", "created_at": "2025"}]
    env.fake.hang("orders.patch", 1.0, apply_first=True)  # applied, answered after the read timeout
    env.deliver("o1", source_id="psNEW", wallet=[{"id": "w-a", "source_id": "ps-a", "created_at": "2025"}])
    w = env.worker(policy=REUSE)
    [o] = w.drain()
    assert o.state == "retry"
    order.wallet.append({"id": "w-b", "source_id": "ps-b", "source_type": "stripe_payments", "created_at": "2026"})
    both = [
        {"id": "w-a", "source_id": "ps-a", "created_at": "2025"},
        {"id": "w-b", "source_id": "ps-b", "created_at": "2026"},
    ]
    rec = env.deliver("o1", topic="orders.pending", source_id="psNEW", wallet=both)
    [o] = w.drain()  # the second job (the first one's retry is not due yet)
    assert o.outcome == "applied" and o.decision.wallet_entry_id == "w-a"
    assert "already applied wallet entry w-a" in o.decision.reason
    assert env.decisions(rec.delivery_id)[-1]["wallet_entry_id"] == "w-a"
    env.clock.advance(60)
    [o] = w.drain()
    assert o.outcome == "guarded" and o.decision.guard == "already_flagged"
    assert [p["json"]["data"]["attributes"] for p in env.fake.calls("orders.patch")] == [
        {"_customer_payment_source_id": "w-a"}
    ]


def test_a_refused_use_never_clears_an_earlier_uncertainty(env):
    """After an uncertain use, a later attempt reads, then its own PATCH is refused (429): the
    next attempt must still read before writing, never trust the body."""
    order = env.fake.add_order("o1", source_id="psNEW")
    order.wallet = [{"id": "w-a", "source_id": "ps-a", "source_type": "stripe_payments", "created_at": "2025"}]
    env.fake.fail("orders.patch", status=502)  # outcome unknown (not applied, as it happens)
    env.fake.fail("orders.patch", status=429, headers={"Retry-After": "1"})
    env.deliver("o1", source_id="psNEW", wallet=[{"id": "w-a", "source_id": "ps-a", "created_at": "2025"}])
    w = env.worker(policy=REUSE)
    assert [o.state for o in w.drain()] == ["retry"]  # 502
    env.clock.advance(60)
    [o] = w.drain()
    assert o.state == "retry" and "429" in o.error
    reads = len(env.fake.calls("orders.get"))
    assert reads == 1  # the second attempt looked first
    assert env.store.begin_action(
        ClaimHolder("o1", worker="probe", job_id=0, now=env.clock(), lease_seconds=1), "use_wallet_source"
    ).uncertain
    env.store.release_action(
        ClaimHolder("o1", worker="probe", job_id=0, now=env.clock(), lease_seconds=1),
        "use_wallet_source",
        uncertain=True,
    )
    env.clock.advance(60)
    [o] = w.drain()
    assert o.outcome == "applied"
    assert len(env.fake.calls("orders.get")) == reads + 1  # and so did the third


def test_a_rate_limit_wait_past_the_lease_sends_no_patch_once_another_worker_took_the_job(env):
    """Worker w1 waits for a rate-limit slot for its PATCH longer than its lease; meanwhile w2
    takes the job over and saves the card. When w1's wait ends it must not send its PATCH: it
    confirms its claims once the slot has come (the client's `confirm`), finds them taken and
    sends nothing."""
    from webhook_app.config import RateLimit
    from webhook_app.ratelimit import LocalRateLimiter
    from webhook_app.states import JobResult

    env.fake.add_order("o1", source_id="psAAAA1111")
    rec = env.deliver("o1")
    other = env.worker(name="w2")
    taken_over = []

    def past_the_lease(seconds):  # w1's wait for its slot: long enough for w2 to claim and save
        assert seconds > env.settings.lease_seconds
        env.clock.advance(seconds)
        taken_over.extend(other.drain())

    # one call a window: w1's read of the order takes it, and its PATCH waits for the next window
    limiter = LocalRateLimiter([RateLimit(1, 3 * env.settings.lease_seconds)], clock=env.clock)
    slow = CommerceLayerClient.from_settings(
        env.settings,
        limiter=limiter,
        clock=env.clock,
        sleep=past_the_lease,
    )
    w1 = Worker(
        store=env.store,
        policy=load_policy(bundled_policy_path()),
        settings=env.settings,
        client=slow,
        clock=env.clock,
        worker_id="w1",
        rng=random.Random(1),
    )
    try:
        [lost] = w1.drain()
    finally:
        slow.close()
    assert [o.outcome for o in taken_over] == ["applied"]
    assert lost.state == JobResult.LOST
    assert len(env.fake.patches()) == 1  # w2's only: w1 sent nothing after its wait
    assert [d["outcome"] for d in env.decisions(rec.delivery_id)] == ["applied"]
