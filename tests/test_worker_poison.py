"""A job no exception can poison: whatever goes wrong while processing one job is caught for that
job, recorded, and the job is dead-lettered at `max_attempts`; the jobs behind it still run.

Real stores (SQLite and PostgreSQL), the recording fake of Commerce Layer over HTTP."""

from __future__ import annotations

import random

import pytest
from support import SECRET, signed_headers
from support.builders import order_body

from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.config import bundled_policy_path
from webhook_app.events import Delivery
from webhook_app.policy import load_policy
from webhook_app.signing import parse_secrets
from webhook_app.worker import Worker

SECRETS = parse_secrets(f"main:{SECRET}")
MAX = 3


@pytest.fixture
def env(fake_cl, store, settings_factory, clock):
    settings = settings_factory(
        mode="enforce",
        cl_api_base=fake_cl.url,
        cl_client_id=fake_cl.client_id,
        cl_client_secret=fake_cl.client_secret,
        cl_auth_url=fake_cl.url + "/oauth/token",
        cl_read_timeout=0.5,
        max_attempts=MAX,
        retry_base_seconds=2,
        retry_max_seconds=60,
    )
    client = CommerceLayerClient.from_settings(settings)

    class Env:
        def __init__(self):
            self.fake, self.store, self.clock, self.settings = fake_cl, store, clock, settings

        def worker(self, name="w1"):
            return Worker(
                store=store,
                policy=load_policy(bundled_policy_path()),
                settings=settings,
                client=client,
                clock=clock,
                worker_id=name,
                rng=random.Random(1),
            )

        def deliver(self, order_id, topic="orders.place"):
            body = order_body(order_id)
            d = Delivery.from_http(signed_headers(body, topic), body, secrets=SECRETS)
            return store.record_delivery(d, now=clock())

    yield Env()
    client.close()


def _drain_rounds(env, rounds=MAX + 3):
    w = env.worker()
    for _ in range(rounds):
        w.drain()
        env.clock.advance(120)


@pytest.mark.parametrize("detail", ["card \x00 refused", "card \ud800 refused"], ids=["nul", "lone-surrogate"])
def test_a_422_whose_detail_the_database_cannot_store_is_dead_lettered(env, detail):
    env.fake.add_order("bad")
    env.fake.add_order("good")
    env.fake.fail(
        "orders.patch",
        status=422,
        body={"errors": [{"title": "Invalid", "detail": detail, "code": "VALIDATION_ERROR", "status": "422"}]},
    )
    bad = env.deliver("bad")
    good = env.deliver("good")
    _drain_rounds(env)
    got = env.store.get_delivery(bad.delivery_id)
    assert got.job["state"] == "dead" and got.job["attempts"] <= MAX
    assert "card" in got.job["last_error"] and "refused" in got.job["last_error"]
    assert "\x00" not in got.job["last_error"]
    assert env.store.get_delivery(good.delivery_id).job["state"] == "done"


def test_an_empty_2xx_answer_is_caught_retried_then_dead_lettered(env):
    env.fake.add_order("empty")
    env.fake.add_order("good")
    env.fake.fail("orders.patch", status=200, times=100, body={"meta": {}})
    bad = env.deliver("empty")
    _drain_rounds(env)
    got = env.store.get_delivery(bad.delivery_id)
    assert got.job["state"] == "dead" and got.job["attempts"] == MAX
    assert "attempts exhausted" in got.job["last_error"]
    env.fake.scripts.clear()
    good = env.deliver("good")
    _drain_rounds(env, 1)
    assert env.store.get_delivery(good.delivery_id).job["state"] == "done"


def test_a_job_whose_worker_keeps_dying_is_dead_lettered_at_the_limit(env):
    env.fake.add_order("o1")
    rec = env.deliver("o1")
    for n in range(MAX):  # a worker claims it and dies (its lease runs out), MAX times
        job = env.store.claim_job(worker=f"dying-{n}", lease_seconds=60, now=env.clock())
        assert job is not None
        env.clock.advance(61)
    out = env.worker().run_once()
    assert out is not None and out.state == "dead"
    got = env.store.get_delivery(rec.delivery_id)
    assert got.job["state"] == "dead" and "lease" in got.job["last_error"]
    assert env.fake.patches() == []


def test_a_policy_slower_than_its_budget_fails_the_job_not_the_worker(env):
    import time

    from webhook_app.policy import Policy

    class Slow(Policy):  # a policy whose decision never ends in time (what a bad pattern did)
        def decide(self, event):
            if event.order_id == "slow":
                time.sleep(5)
            return super().decide(event)

    base = load_policy(bundled_policy_path())
    slow = Slow(base.rules, base.default, base.wallet_source_types, base.roots)
    w = Worker(
        store=env.store,
        policy=slow,
        settings=env.settings.with_overrides(decide_budget=0.2, mode="shadow"),
        clock=env.clock,
        worker_id="w1",
        rng=random.Random(1),
    )
    bad = env.deliver("slow")
    good = env.deliver("fast")
    started = time.monotonic()
    for _ in range(MAX + 1):
        w.drain()
        env.clock.advance(120)
    assert time.monotonic() - started < 4  # each attempt stopped at its budget
    got = env.store.get_delivery(bad.delivery_id)
    assert got.job["state"] == "dead" and "longer than 0.2 s" in got.job["last_error"]
    assert env.store.get_delivery(good.delivery_id).job["state"] == "done"


def test_the_supervisors_restart_delay_starts_afresh_after_a_healthy_run():
    from webhook_app.runtime import WORKER_STABLE_SECONDS, restart_delay

    restarts, waits = 0, []
    for _ in range(7):  # a worker that keeps dying at once: the delays grow to the cap
        restarts, wait = restart_delay(restarts, ran_for=1.0)
        waits.append(wait)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    restarts, wait = restart_delay(restarts, ran_for=WORKER_STABLE_SECONDS + 1)  # it had been fine
    assert (restarts, wait) == (1, 1.0)
