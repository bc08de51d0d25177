"""Anonymization honoured by the worker (ops/anonymization.py), on real stores (SQLite and PostgreSQL).

Commerce Layer's `customers.anonymization_completed` erases every stored body naming the customer
(by id and by the e-mail addresses the stored bodies give them), keeps everyone else's, is recorded
once in the operations log and counted; `_started`/`_cancelled`/`_failed` are recorded only.
"""

from __future__ import annotations

import json
import random

import pytest
from support import SECRET, signed_headers
from support.builders import order_body

from webhook_app.config import bundled_policy_path
from webhook_app.errors import InvalidPayload
from webhook_app.events import Delivery
from webhook_app.ops.anonymization import Anonymizer, customer_emails
from webhook_app.ops.registration import plan
from webhook_app.policy import load_policy
from webhook_app.signing import parse_secrets
from webhook_app.store import Job
from webhook_app.topics import ANONYMIZATION_TOPICS, KNOWN_TOPICS
from webhook_app.worker import Worker

SECRETS = parse_secrets(f"main:{SECRET}")
ANON = "anonymized-7f3a@anonymized.invalid"  # what the completed event shows instead of the address


def customer_body(customer_id, email, status=None, **extra):
    attrs = {"email": email, "status": "repeat", "has_password": True, **extra}
    if status is not None:
        attrs["anonymization_status"] = status
        attrs["anonymization_info"] = {
            "status": status,
            "requested_at": "2026-01-01 10:00:00 UTC",
            # the requester is a user of the organization, not the customer: never matched
            "requester": {"id": "usr1", "first_name": "Ada", "last_name": "Admin", "email": "admin@shop.test"},
        }
    return json.dumps({"data": {"id": customer_id, "type": "customers", "attributes": attrs}}).encode()


def deliver(store, now, topic, body):
    return store.record_delivery(Delivery.from_http(signed_headers(body, topic), body, secrets=SECRETS), now=now)


def worker(store, settings, clock, events, *, enabled=True):
    return Worker(
        store=store,
        policy=load_policy(bundled_policy_path()),
        settings=settings,
        clock=clock,
        worker_id="w",
        rng=random.Random(1),
        observer=lambda what, fields: events.append((what, fields)),
        handlers=Anonymizer(store, enabled=enabled).handlers(),
    )


def kept(store, ids):
    return [i for i in ids if store.get_delivery(i).body]


@pytest.fixture
def two_customers(store, clock):
    """Ada (cusADA0001) and Bob (cusBOB0001) with stored deliveries; a guest order placed with
    Ada's address (linked to no customer); Ada's anonymization started."""
    t = clock()
    ada = [
        deliver(store, t, "orders.place", order_body(f"ordADA{n:04d}", customer_id="cusADA0001")).delivery_id
        for n in range(3)
    ]
    ada.append(deliver(store, t, "customers.create", customer_body("cusADA0001", "Ada@Example.com")).delivery_id)
    guest = order_body("ordGST0001", customer_id=None).replace(b"guest@example.com", b"ada@example.com")
    ada.append(deliver(store, t, "orders.place", guest).delivery_id)
    started = deliver(
        store, t, "customers.anonymization_started", customer_body("cusADA0001", "ada@example.com", "in_progress")
    )
    ada.append(started.delivery_id)
    bob = [
        deliver(store, t, "orders.place", order_body(f"ordBOB{n:04d}", customer_id="cusBOB0001")).delivery_id
        for n in range(2)
    ]
    bob.append(deliver(store, t, "customers.create", customer_body("cusBOB0001", "bob@example.com")).delivery_id)
    return ada, bob, started


def test_completed_erases_every_body_of_the_customer_and_keeps_the_others(
    store, settings_factory, clock, two_customers
):
    ada, bob, started = two_customers
    events: list = []
    w = worker(store, settings_factory(), clock, events)
    assert started.status == "queued" and started.job_id is not None
    w.drain()
    assert len(kept(store, ada)) == len(ada) and len(kept(store, bob)) == len(bob)  # before
    [op] = store.list_operations(kind="anonymization")
    assert (op.subject, op.detail["event"]) == ("cusADA0001", "started")

    completed = deliver(
        store, clock(), "customers.anonymization_completed", customer_body("cusADA0001", ANON, "completed")
    )
    assert completed.status == "queued" and completed.job_id is not None
    [outcome] = w.drain()
    assert outcome.outcome == "erased"
    assert kept(store, ada) == [] and kept(store, bob) == bob  # after: Ada's all gone, Bob's all kept
    for i in (*ada, completed.delivery_id):
        d = store.get_delivery(i)
        assert d.headers == {} and d.body_removed == "forgotten"
    own = store.get_delivery(completed.delivery_id)
    assert own.resource_id == "cusADA0001" and own.job["state"] == "done"
    assert own.decisions[-1]["rule"] == "anonymization" and own.decisions[-1]["outcome"] == "erased"
    op = store.list_operations(kind="anonymization")[0]
    assert op.subject == "cusADA0001" and op.detail["event"] == "completed"
    assert op.detail["removed"] == len(ada) + 1 and op.detail["by"] == "customer id and email"
    assert "@" not in json.dumps(op.detail) and "@" not in own.decisions[-1]["reason"]
    handled = [f for what, f in events if what == "handled"]
    assert [(f["anonymization"], f["outcome"]) for f in handled] == [("started", "recorded"), ("completed", "erased")]
    assert handled[-1]["erased"] == len(ada) + 1


def test_a_repeated_completed_erases_nothing_more_and_is_recorded_once(store, settings_factory, clock, two_customers):
    ada, bob, _ = two_customers
    w = worker(store, settings_factory(), clock, [])
    body = customer_body("cusADA0001", ANON, "completed")
    deliver(store, clock(), "customers.anonymization_completed", body)
    w.drain()
    assert deliver(store, clock(), "customers.anonymization_completed", body).duplicate  # same bytes: no job
    again = deliver(
        store,
        clock(),
        "customers.anonymization_completed",
        customer_body("cusADA0001", ANON, "completed", reference="x"),
    )
    [outcome] = w.drain()
    assert outcome.outcome == "already_erased"
    assert kept(store, bob) == bob and not store.get_delivery(again.delivery_id).body
    assert [o.detail["event"] for o in store.list_operations(kind="anonymization")] == ["completed", "started"]


def test_an_attempt_retried_after_recording_does_not_record_again(store, clock, two_customers):
    _, _, started = two_customers
    anonymizer = Anonymizer(store)
    d = store.get_delivery(started.delivery_id)
    job = Job(started.job_id, d.id, "", d.topic, 1, d.body, d.received_at, clock() + 60)
    first, second = anonymizer.handle(job, clock()), anonymizer.handle(job, clock())
    assert first.outcome == second.outcome == "recorded"
    assert len(store.list_operations(kind="anonymization")) == 1


def test_with_the_setting_off_nothing_is_erased_or_recorded(store, settings_factory, clock, two_customers):
    ada, bob, _ = two_customers
    events: list = []
    w = worker(store, settings_factory(honour_anonymization=False), clock, events, enabled=False)
    done = deliver(store, clock(), "customers.anonymization_completed", customer_body("cusADA0001", ANON, "completed"))
    outcomes = w.drain()
    assert [o.outcome for o in outcomes if o.decision.rule == "anonymization"] == ["disabled", "disabled"]
    assert kept(store, ada) == ada and kept(store, bob) == bob and store.get_delivery(done.delivery_id).body
    assert store.list_operations(kind="anonymization") == []
    assert "WEBHOOK_APP_HONOUR_ANONYMIZATION" in store.get_delivery(done.delivery_id).decisions[-1]["reason"]


def test_shadow_mode_erases_too(store, settings_factory, clock, two_customers):
    ada, bob, _ = two_customers
    w = worker(store, settings_factory(mode="shadow"), clock, [])
    deliver(store, clock(), "customers.anonymization_completed", customer_body("cusADA0001", ANON, "completed"))
    w.drain()
    assert kept(store, ada) == [] and kept(store, bob) == bob


def test_emails_come_from_bodies_that_do_not_show_the_customer_anonymized(store, clock, two_customers):
    deliver(store, clock(), "customers.metadata_update", customer_body("cusADA0001", ANON, "completed"))
    assert customer_emails(store, "cusADA0001") == ["cusada0001@example.com", "ada@example.com"]
    assert customer_emails(store, "cusNOBODY1") == []


def test_a_worker_without_the_handler_dead_letters_rather_than_running_the_policy(store, settings_factory, clock):
    deliver(store, clock(), "customers.anonymization_completed", customer_body("cusADA0001", ANON, "completed"))
    w = Worker(store=store, policy=load_policy(bundled_policy_path()), settings=settings_factory(), clock=clock)
    [outcome] = w.drain()
    assert outcome.state == "dead" and "no handler" in outcome.error


def test_the_intake_accepts_the_four_topics_for_a_customer_only():
    assert set(ANONYMIZATION_TOPICS) <= KNOWN_TOPICS
    body = order_body("ordAAA1111")
    with pytest.raises(InvalidPayload, match="not `customers`"):
        Delivery.from_http(signed_headers(body, "customers.anonymization_completed"), body, secrets=SECRETS)


def test_registration_subscribes_to_the_anonymization_topics_when_on():
    policy = load_policy(bundled_policy_path())
    assert not {t for t, _ in plan(policy)} & set(ANONYMIZATION_TOPICS)
    planned = dict(plan(policy, anonymization=True))
    assert all(planned[t] == [] for t in ANONYMIZATION_TOPICS)


def test_an_anonymization_erases_in_its_own_organization_only(store, settings_factory, clock, two_customers):
    """Agency mode: the same address at another brand is another customer, who asked nothing."""
    ada, bob, _ = two_customers
    body = order_body("ordACM0001", customer_id="cusACME001").replace(b"cusACME001@example.com", b"ada@example.com")
    other = store.record_delivery(
        Delivery.from_http(signed_headers(body), body, secrets=SECRETS, organization="acme"), now=clock()
    ).delivery_id
    w = worker(store, settings_factory(), clock, [])
    w.drain()
    deliver(store, clock(), "customers.anonymization_completed", customer_body("cusADA0001", ANON, "completed"))
    w.drain()
    assert kept(store, ada) == [] and kept(store, bob) == bob
    assert kept(store, [other]) == [other]  # acme's customer with the same address: kept
