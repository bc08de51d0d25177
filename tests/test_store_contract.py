"""The storage contract: every backend must pass these (SQLite always; PostgreSQL when reachable)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import fields, replace

import pytest
from support import SECRET, signed_headers
from support.builders import order_body

from webhook_app.events import Delivery
from webhook_app.signing import parse_secrets
from webhook_app.states import ClaimStatus
from webhook_app.store import (
    SCHEMA_VERSION,
    ActionClaim,
    CardClaim,
    ClaimHolder,
    DecisionRecord,
    DeliveryFilter,
    Submission,
)
from webhook_app.store.sqlite import SQLiteStore

SECRETS = parse_secrets(f"main:{SECRET}")
T0 = 1_800_000_000.0


def delivery(order_id="o1", topic="orders.place", **kw):
    body = order_body(order_id, **kw)
    return Delivery.from_http(signed_headers(body, topic), body, secrets=SECRETS)


def customer_delivery():
    body = b'{"data":{"id":"c1","type":"customers"}}'
    return Delivery.from_http(signed_headers(body, "customers.create"), body, secrets=SECRETS)


DECISION = DecisionRecord(
    rule="r", action="save_payment_source", reason="because", outcome="applied", mode="enforce", wallet_entry_id="w1"
)


def test_schema_is_current(store):
    assert store.schema_version() == SCHEMA_VERSION
    store.check_schema()
    assert store.migrate() == SCHEMA_VERSION  # idempotent
    store.ping()


def every_field_delivery():
    """A delivery whose every field holds something other than its default: one the store drops
    or mixes up on the way shows."""
    body = order_body("oRound")
    headers = {**signed_headers(body, "orders.place"), "X-Extra": 'ünïcode, "quoted"'}
    d = Delivery.from_http(headers, body, secrets=SECRETS, organization="acme")
    for f in fields(Delivery):
        assert getattr(d, f.name) not in (f.default, None, "", {}, b""), f.name
    return d


def test_every_delivery_field_comes_back_as_stored(store):
    d = every_field_delivery()
    one = store.record_delivery(d, now=T0)
    (batched,) = store.record_deliveries([Submission(d.as_replay("n1"), T0 + 1, one.delivery_id)])
    for rec, sent in ((one, d), (batched, d.as_replay("n1"))):
        got = store.get_delivery(rec.delivery_id)
        assert Delivery.from_row(vars(got)) == sent
        assert {f.name: getattr(got, f.name) for f in fields(Delivery)} == {
            f.name: getattr(sent, f.name) for f in fields(Delivery)
        }
        assert got.order_id == sent.order_id == "oRound"
    (listed,) = store.list_deliveries(DeliveryFilter(with_body=True, before_id=batched.delivery_id))
    assert Delivery.from_row(vars(listed)) == d
    replayed = store.record_replay(one.delivery_id, nonce="n2", now=T0 + 2)
    assert Delivery.from_row(vars(store.get_delivery(replayed.delivery_id))) == d.as_replay("n2")


def test_record_once_then_duplicate(store):
    d = delivery()
    first = store.record_delivery(d, now=T0)
    again = store.record_delivery(d, now=T0 + 5)
    assert not first.duplicate and first.status == "queued" and first.job_id is not None
    assert again.duplicate and again.delivery_id == first.delivery_id and again.job_id == first.job_id
    assert store.queue_stats(now=T0).pending == 1


def test_stored_delivery_keeps_raw_body_headers_and_label(store):
    d = delivery()
    rec = store.record_delivery(d, now=T0)
    got = store.get_delivery(rec.delivery_id)
    assert got.body == d.body and got.topic == "orders.place" and got.order_id == "o1"
    assert got.secret_label == "main" and got.headers["X-CommerceLayer-Topic"] == "orders.place"
    assert got.received_at == T0 and got.job["state"] == "pending" and got.identity == d.identity


def test_non_order_topics_are_recorded_as_ignored_without_job(store):
    rec = store.record_delivery(customer_delivery(), now=T0)
    assert rec.status == "ignored" and rec.job_id is None
    assert store.claim_job(worker="w", lease_seconds=30, now=T0) is None


def test_claim_lease_finish(store):
    rec = store.record_delivery(delivery(), now=T0)
    job = store.claim_job(worker="w1", lease_seconds=30, now=T0)
    assert job.id == rec.job_id and job.attempts == 1 and job.order_id == "o1" and job.body == delivery().body
    assert store.claim_job(worker="w2", lease_seconds=30, now=T0 + 1) is None  # leased
    assert store.finish_job(job.id, worker="w1", decision=DECISION, now=T0 + 2)
    got = store.get_delivery(rec.delivery_id)
    assert got.job["state"] == "done"
    assert got.decisions[0]["outcome"] == "applied" and got.decisions[0]["wallet_entry_id"] == "w1"
    assert got.attempts[0]["outcome"] == "applied"


def test_expired_lease_is_claimed_again_and_old_holder_cannot_finish(store):
    store.record_delivery(delivery(), now=T0)
    job = store.claim_job(worker="dead", lease_seconds=30, now=T0)
    again = store.claim_job(worker="alive", lease_seconds=30, now=T0 + 31)
    assert again.id == job.id and again.attempts == 2
    assert not store.finish_job(job.id, worker="dead", decision=DECISION, now=T0 + 32)
    assert not store.retry_job(job.id, worker="dead", error="x", next_attempt_at=T0, now=T0 + 32)
    assert store.finish_job(job.id, worker="alive", decision=DECISION, now=T0 + 33)
    attempts = store.get_delivery(job.delivery_id).attempts
    assert [a["outcome"] for a in attempts] == ["lease_expired", "applied"]


def test_heartbeat_extends_lease(store):
    store.record_delivery(delivery(), now=T0)
    job = store.claim_job(worker="w1", lease_seconds=30, now=T0)
    assert store.heartbeat(job.id, worker="w1", lease_seconds=30, now=T0 + 25)
    assert store.claim_job(worker="w2", lease_seconds=30, now=T0 + 40) is None
    assert not store.heartbeat(job.id, worker="w2", lease_seconds=30, now=T0 + 41)


def test_heartbeat_before_a_call_says_whether_the_claims_were_taken_over(store):
    """A worker frozen past its lease whose job nobody reclaimed still renews the job's lease, but
    another job of the order took the action over (another order, the card): it must not call."""
    store.record_delivery(delivery(), now=T0)
    store.record_delivery(delivery(total_cents=1), now=T0)
    j1 = store.claim_job(worker="w1", lease_seconds=30, now=T0)
    h1 = ClaimHolder("o1", worker="w1", job_id=j1.id, now=T0, lease_seconds=30)
    assert store.begin_save(h1, ("cus1", "card1"))[1].status == ClaimStatus.ACQUIRED
    assert store.heartbeat(j1.id, worker="w1", lease_seconds=30, now=T0 + 10, action="save_payment_source", card=True)
    j2 = store.claim_job(worker="w2", lease_seconds=60, now=T0 + 1)
    assert j2 is not None and j2.id != j1.id
    h2 = ClaimHolder("o1", worker="w2", job_id=j2.id, now=T0 + 41, lease_seconds=30)
    assert store.begin_action(h2, "save_payment_source").status == ClaimStatus.ACQUIRED
    assert store.heartbeat(j1.id, worker="w1", lease_seconds=30, now=T0 + 42)  # the job alone: still its
    assert not store.heartbeat(j1.id, worker="w1", lease_seconds=30, now=T0 + 42, action="save_payment_source")
    # the card alone, taken over by another order of the customer
    store.record_delivery(delivery(order_id="o2"), now=T0)
    j3 = store.claim_job(worker="w3", lease_seconds=30, now=T0 + 43)
    h3 = ClaimHolder("o2", worker="w3", job_id=j3.id, now=T0 + 43, lease_seconds=30)
    assert store.begin_save(h3, ("cus2", "card2"))[1].status == ClaimStatus.ACQUIRED
    j4_holder = ClaimHolder("o2b", worker="w4", job_id=999, now=T0 + 80, lease_seconds=30)
    assert store.claim_card(j4_holder, "cus2", "card2").status == ClaimStatus.ACQUIRED
    assert store.heartbeat(j3.id, worker="w3", lease_seconds=30, now=T0 + 81, action="save_payment_source")
    assert not store.heartbeat(
        j3.id, worker="w3", lease_seconds=30, now=T0 + 81, action="save_payment_source", card=True
    )


def test_retry_waits_until_next_attempt_then_dead_letter_and_requeue(store):
    rec = store.record_delivery(delivery(), now=T0)
    job = store.claim_job(worker="w", lease_seconds=30, now=T0)
    assert store.retry_job(job.id, worker="w", error="HTTP 503", next_attempt_at=T0 + 10, now=T0 + 1)
    assert store.claim_job(worker="w", lease_seconds=30, now=T0 + 9) is None
    job = store.claim_job(worker="w", lease_seconds=30, now=T0 + 10)
    assert job.attempts == 2
    assert store.dead_letter(job.id, worker="w", error="gave up", decision=None, now=T0 + 11)
    stats = store.queue_stats(now=T0 + 11)
    assert stats.dead == 1 and stats.pending == 0
    got = store.get_delivery(rec.delivery_id)
    assert got.job["state"] == "dead" and got.job["last_error"] == "gave up"
    assert store.requeue(job.id, now=T0 + 20)
    assert not store.requeue(job.id, now=T0 + 20)  # only dead jobs
    job = store.claim_job(worker="w", lease_seconds=30, now=T0 + 20)
    assert job.attempts == 1


def test_attempt_numbers_continue_across_deferrals_and_requeues_each_with_its_own_record(store):
    """A requeue (or a deferral) starts the job's attempt budget afresh, but attempts are numbered
    on: each row keeps its own number, error and trace ids (a requeue once showed two "#1")."""
    rec = store.record_delivery(delivery(), now=T0)
    first = store.claim_job(worker="w", lease_seconds=30, now=T0)
    assert (first.attempts, first.number) == (1, 1)
    store.record_attempt_traces(first.id, first.number, trace_id="t1", cl_trace_ids=["cl-1"])
    store.retry_job(first.id, worker="w", error="busy", next_attempt_at=T0, now=T0, count_attempt=False)
    second = store.claim_job(worker="w", lease_seconds=30, now=T0 + 1)
    assert (second.attempts, second.number) == (1, 2)
    store.record_attempt_traces(second.id, second.number, trace_id="t2", cl_trace_ids=["cl-2"])
    assert store.dead_letter(second.id, worker="w", error="HTTP 401", decision=None, now=T0 + 2)
    assert store.requeue(second.id, now=T0 + 3)
    third = store.claim_job(worker="w", lease_seconds=30, now=T0 + 3)
    assert (third.attempts, third.number) == (1, 3)
    store.record_attempt_traces(third.id, third.number, trace_id="t3", cl_trace_ids=["cl-3a", "cl-3b"])
    assert store.finish_job(third.id, worker="w", decision=DECISION, now=T0 + 4)
    got = store.get_delivery(rec.delivery_id)
    rows = [(a["number"], a["outcome"], a["error"], a["trace_id"], a["cl_trace_ids"]) for a in got.attempts]
    assert rows == [
        (1, "deferred", "busy", "t1", "cl-1"),
        (2, "dead", "HTTP 401", "t2", "cl-2"),
        (3, "applied", None, "t3", "cl-3a,cl-3b"),
    ]
    assert got.job["state"] == "done" and got.job["attempts"] == 1


def test_uncounted_retry_does_not_use_attempts(store):
    store.record_delivery(delivery(), now=T0)
    job = store.claim_job(worker="w", lease_seconds=30, now=T0)
    store.retry_job(job.id, worker="w", error="busy", next_attempt_at=T0, now=T0, count_attempt=False)
    assert store.claim_job(worker="w", lease_seconds=30, now=T0).attempts == 1


def test_jobs_are_claimed_in_due_order(store):
    store.record_delivery(delivery("o1"), now=T0 + 2)
    store.record_delivery(delivery("o2"), now=T0 + 1)
    assert store.claim_job(worker="w", lease_seconds=30, now=T0 + 3).order_id == "o2"


def test_action_claims_give_exactly_once(store):
    store.record_delivery(delivery("o1"), now=T0)
    job = store.claim_job(worker="w1", lease_seconds=30, now=T0)
    a = store.begin_action(ClaimHolder("o1", worker="w1", job_id=job.id, now=T0, lease_seconds=30), "save")
    assert a.status == "acquired" and not a.uncertain
    assert (
        store.begin_action(ClaimHolder("o1", worker="w2", job_id=2, now=T0 + 1, lease_seconds=30), "save").status
        == "busy"
    )
    assert (
        store.begin_action(ClaimHolder("o1", worker="w2", job_id=2, now=T0 + 1, lease_seconds=30), "other").status
        == "acquired"
    )
    assert store.finish_job(
        job.id, worker="w1", decision=replace(DECISION, wallet_entry_id="w9"), now=T0 + 2, action="save"
    )
    done = store.begin_action(ClaimHolder("o1", worker="w2", job_id=2, now=T0 + 3, lease_seconds=30), "save")
    assert done.status == "done" and done.wallet_entry_id == "w9"
    assert store.action_state("o1", "save") == "done" and store.action_state("o2", "save") is None


def test_action_claim_of_dead_worker_is_taken_over_as_uncertain(store):
    store.begin_action(ClaimHolder("o1", worker="w1", job_id=1, now=T0, lease_seconds=30), "save")
    took = store.begin_action(ClaimHolder("o1", worker="w2", job_id=1, now=T0 + 31, lease_seconds=30), "save")
    assert took.status == "acquired" and took.uncertain
    store.release_action(
        ClaimHolder("o1", worker="w1", job_id=1, now=T0 + 32, lease_seconds=30), "save", uncertain=False
    )  # the dead worker's late word
    assert (
        store.begin_action(ClaimHolder("o1", worker="w3", job_id=1, now=T0 + 33, lease_seconds=30), "save").status
        == "busy"
    )


def test_released_action_remembers_uncertainty(store):
    store.begin_action(ClaimHolder("o1", worker="w1", job_id=1, now=T0, lease_seconds=30), "save")
    store.release_action(
        ClaimHolder("o1", worker="w1", job_id=1, now=T0 + 1, lease_seconds=30), "save", uncertain=False
    )
    clean = store.begin_action(ClaimHolder("o1", worker="w2", job_id=1, now=T0 + 2, lease_seconds=30), "save")
    assert clean == ActionClaim("acquired", uncertain=False)
    store.release_action(ClaimHolder("o1", worker="w2", job_id=1, now=T0 + 3, lease_seconds=30), "save", uncertain=True)
    assert store.begin_action(ClaimHolder("o1", worker="w3", job_id=1, now=T0 + 4, lease_seconds=30), "save").uncertain


def test_list_deliveries_filters(store):
    r1 = store.record_delivery(delivery("o1"), now=T0)
    store.record_delivery(delivery("o2", topic="orders.approve"), now=T0 + 10)
    store.record_delivery(customer_delivery(), now=T0 + 20)
    job = store.claim_job(worker="w", lease_seconds=30, now=T0 + 30)
    assert job.delivery_id == r1.delivery_id
    store.finish_job(job.id, worker="w", decision=DECISION, now=T0 + 31)
    ids = lambda **kw: [d.id for d in store.list_deliveries(DeliveryFilter(**kw))]  # noqa: E731
    assert len(ids()) == 3 and ids() == sorted(ids(), reverse=True)
    assert ids(topic="orders.approve") == [2]
    assert ids(order_id="o1") == [1]
    assert ids(status="ignored") == [3]
    assert ids(status="done") == [1] and ids(status="pending") == [2]
    assert ids(since=T0 + 5) == [3, 2] and ids(until=T0 + 5) == [1]
    assert ids(decision="applied") == [1] and ids(decision="save_payment_source") == [1]
    assert ids(limit=1) == [3] and ids(before_id=3, limit=1) == [2]
    listed = store.list_deliveries(DeliveryFilter(order_id="o1"))[0]
    assert listed.decisions[0]["rule"] == "r"


def test_queue_stats_oldest_pending_age(store):
    store.record_delivery(delivery("o1"), now=T0)
    store.record_delivery(delivery("o2"), now=T0 + 5)
    stats = store.queue_stats(now=T0 + 20)
    assert stats.pending == 2 and stats.oldest_pending_age == 20
    assert store.queue_stats(now=T0).oldest_pending_age == 0


def test_decision_counts_and_known_orders(store):
    store.record_delivery(delivery("o1"), now=T0)
    job = store.claim_job(worker="w", lease_seconds=30, now=T0)
    store.finish_job(job.id, worker="w", decision=DECISION, now=T0)
    assert store.decision_counts() == [("r", "save_payment_source", "applied", 1)]
    store.record_delivery(delivery("o3"), now=T0)  # a job not yet decided still counts as known
    assert store.orders_with_jobs(["o1", "o2", "o3"]) == {"o1", "o3"}


def test_job_state_by_id(store):
    store.record_delivery(delivery("o1"), now=T0)
    job = store.claim_job(worker="w", lease_seconds=30, now=T0)
    assert store.job_state(job.id) == "running"
    store.dead_letter(job.id, worker="w", error="x", decision=None, now=T0)
    assert store.job_state(job.id) == "dead" and store.job_state(job.id + 1000) is None


def test_iter_deliveries_pages_through_all_newest_first(store):
    for n in range(7):
        store.record_delivery(delivery(f"o{n}"), now=T0 + n)
    got = [d.order_id for d in store.iter_deliveries(DeliveryFilter(limit=100), page_size=3)]
    assert got == [f"o{n}" for n in reversed(range(7))]
    assert [d.order_id for d in store.iter_deliveries(DeliveryFilter(limit=4), page_size=3)] == ["o6", "o5", "o4", "o3"]


def test_concurrent_duplicates_make_one_job(store_factory):
    d = delivery("race")
    results = []
    barrier = threading.Barrier(8)

    def post():
        s = store_factory()
        barrier.wait()
        results.append(s.record_delivery(d, now=T0))
        s.close()

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.job_id for r in results}) == 1
    s = store_factory()
    assert s.queue_stats(now=T0).pending == 1
    s.close()


def test_concurrent_claims_never_hand_out_a_job_twice(store_factory):
    s = store_factory()
    for n in range(30):
        s.record_delivery(delivery(f"o{n}"), now=T0)
    s.close()
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name):
        st = store_factory()
        while True:
            job = st.claim_job(worker=name, lease_seconds=60, now=T0 + 1)
            if job is None:
                break
            with lock:
                claimed.append(job.id)
            st.finish_job(job.id, worker=name, decision=DECISION, now=T0 + 2)
        st.close()

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 30


def test_rate_limiter_is_shared_by_every_worker_of_a_backend(store_factory):
    """Two workers' limiters together stay under the windows (PostgreSQL shares them)."""
    from webhook_app.config import RateLimit
    from webhook_app.ratelimit import WINDOW_GUARD_SECONDS

    now = [1000.0]
    a, b = store_factory(), store_factory()
    limits = [RateLimit(4, 10)]
    la, lb = a.rate_limiter(limits, clock=lambda: now[0]), b.rate_limiter(limits, clock=lambda: now[0])
    slots = sorted([la.reserve() for _ in range(4)] + [lb.reserve() for _ in range(4)])
    if type(a).__name__ == "PostgresStore":
        assert slots == [1000.0] * 4 + [1010.0 + WINDOW_GUARD_SECONDS] * 4  # one budget across both
    else:
        assert slots == [1000.0] * 8  # SQLite: each process keeps its own windows


def test_a_429_hold_is_kept_by_every_worker_of_a_backend(store_factory):
    """After Commerce Layer's 429, no slot starts before the hold: every worker's (PostgreSQL)."""
    from webhook_app.config import RateLimit
    from webhook_app.ratelimit import WINDOW_GUARD_SECONDS

    now = [1000.0]
    a, b = store_factory(), store_factory()
    limits = [RateLimit(100, 60)]
    la, lb = a.rate_limiter(limits, clock=lambda: now[0]), b.rate_limiter(limits, clock=lambda: now[0])
    la.hold(1030.0)
    la.hold(1020.0)  # an earlier hold does not shorten it
    assert la.reserve() == 1030.0
    shared = type(a).__name__ == "PostgresStore"
    assert lb.reserve() == (1030.0 if shared else 1000.0)
    now[0] = 1031.0
    assert la.reserve() == 1031.0
    la.hold(1e12)  # a Retry-After of years: held for the longest window at most
    assert la.reserve() == 1031.0 + 60 + WINDOW_GUARD_SECONDS


def test_replays_are_new_deliveries_linked_to_the_original(store):
    d = delivery("o1")
    original = store.record_delivery(d, now=T0)
    assert store.delivery_id_for_identity(d.identity) == original.delivery_id
    assert store.delivery_id_for_identity("nope") is None
    r1 = store.record_replay(original.delivery_id, nonce="n1", now=T0 + 1)
    r2 = store.record_replay(original.delivery_id, nonce="n2", now=T0 + 2)
    again = store.record_replay(original.delivery_id, nonce="n1", now=T0 + 3)
    assert not r1.duplicate and not r2.duplicate and again.duplicate and again.delivery_id == r1.delivery_id
    assert r1.job_id and r1.job_id != original.job_id
    got = store.get_delivery(r1.delivery_id)
    assert got.replay_of == original.delivery_id and got.body == d.body and got.topic == d.topic
    # a replay of a replay points at the original
    r3 = store.record_replay(r1.delivery_id, nonce="n3", now=T0 + 4)
    assert store.get_delivery(r3.delivery_id).replay_of == original.delivery_id
    assert store.record_replay(99999, nonce="x", now=T0) is None
    job = store.claim_job(worker="w", lease_seconds=30, now=T0 + 10)
    assert job.id == original.job_id and not job.replay
    job = store.claim_job(worker="w", lease_seconds=30, now=T0 + 10)
    assert job.replay


def test_finishing_a_job_can_complete_its_action_claim_atomically(store):
    rec = store.record_delivery(delivery("o1"), now=T0)
    job = store.claim_job(worker="w", lease_seconds=30, now=T0)
    assert (
        store.begin_action(
            ClaimHolder("o1", worker="w", job_id=job.id, now=T0, lease_seconds=30), "save_payment_source"
        ).status
        == "acquired"
    )
    assert store.finish_job(job.id, worker="w", decision=DECISION, now=T0 + 1, action="save_payment_source")
    assert store.action_state("o1", "save_payment_source") == "done"
    claim = store.begin_action(
        ClaimHolder("o1", worker="x", job_id=99, now=T0 + 2, lease_seconds=30), "save_payment_source"
    )
    assert claim.status == "done" and claim.wallet_entry_id == "w1"
    assert store.get_delivery(rec.delivery_id).job["state"] == "done"


def test_operations_log(store):
    a = store.record_operation("wallet_entry_deleted", subject="cus1", detail={"entry": "w2"}, now=T0)
    b = store.record_operation("circuit_reset", subject=None, detail={"n": 1, "ok": True}, now=T0 + 1)
    c = store.record_operation(
        "wallet_entry_deleted", subject="cus2", detail={"entry": "w9", "why": "dupe é"}, now=T0 + 2
    )
    assert [o.id for o in store.list_operations()] == [c, b, a]
    assert [o.id for o in store.list_operations(kind="wallet_entry_deleted")] == [c, a]
    assert [o.id for o in store.list_operations(limit=1, before_id=c)] == [b]
    got = store.list_operations(kind="wallet_entry_deleted", limit=1)[0]
    assert (got.at, got.subject, got.detail) == (T0 + 2, "cus2", {"entry": "w9", "why": "dupe é"})


def test_database_bytes_is_the_size_on_disk_and_grows(store):
    before = store.database_bytes()
    assert before > 0
    for n in range(300):
        store.record_delivery(delivery(f"grow{n}", metadata={"pad": "x" * 4000}), now=T0)
    assert store.database_bytes() > before


def test_wallet_activity_by_day_and_market_and_operations_since(store):
    # the market comes from the stored body's `market` linkage (order_body links mktAAA1111)
    for n, (decision, at) in enumerate(
        [
            (DECISION, T0),
            (DECISION, T0 + 10),
            (replace(DECISION, action="skip", outcome="guarded", guard="wallet_card_expired"), T0 + 86400),
            (replace(DECISION, action="skip", outcome="skipped", rule="default"), T0 + 86400),
        ]
    ):
        store.record_delivery(delivery(f"o{n}"), now=at)
        job = store.claim_job(worker="w", lease_seconds=30, now=at)
        assert store.finish_job(job.id, worker="w", decision=decision, now=at)
    rows = sorted(store.wallet_activity(since=0), key=lambda r: r.day)
    day = int(T0 // 86400)
    assert [(r.day, r.market_id, r.action, r.guard, r.count) for r in rows] == [
        (day, "mktAAA1111", "save_payment_source", None, 2),
        (day + 1, "mktAAA1111", "skip", "wallet_card_expired", 1),
    ]  # a plain skip is not wallet activity
    assert [r.day for r in store.wallet_activity(since=T0 + 3600)] == [day + 1]
    store.record_operation("wallet_expired_scan", subject=None, detail={"expired": 1}, now=T0)
    store.record_operation("wallet_entry_deleted", subject="w1", detail={"why": "card_expired"}, now=T0 + 5)
    store.record_operation("circuit_reset", subject="h", detail={}, now=T0 + 6)
    ops = store.operations_since(["wallet_expired_scan", "wallet_entry_deleted"], since=T0)
    assert [o.kind for o in ops] == ["wallet_expired_scan", "wallet_entry_deleted"]
    assert store.operations_since(["wallet_entry_deleted"], since=T0 + 6) == []


def test_service_status_keeps_since_until_the_state_changes(store):
    assert store.get_status("commercelayer_credentials") is None
    first = store.set_status("commercelayer_credentials", "refused", reason="HTTP 401", source="w1", now=T0)
    assert (first.state, first.since, first.updated_at, first.reason, first.source) == (
        "refused",
        T0,
        T0,
        "HTTP 401",
        "w1",
    )
    store.set_status("commercelayer_credentials", "refused", reason="HTTP 403", source="w2", now=T0 + 60)
    got = store.get_status("commercelayer_credentials")
    assert (got.state, got.since, got.updated_at, got.reason, got.source) == ("refused", T0, T0 + 60, "HTTP 403", "w2")
    store.set_status("commercelayer_credentials", "ok", reason=None, source="w1", now=T0 + 90)
    got = store.get_status("commercelayer_credentials")
    assert (got.state, got.since, got.reason) == ("ok", T0 + 90, None)
    assert store.get_status("something_else") is None


# --- card claims: one save of a customer's card at a time --------------------------------------
SAVE = "save_payment_source"


def _saving(store, order_id, worker, now):
    """A job of `order_id` claimed by `worker`, holding the order's save action."""
    store.record_delivery(delivery(order_id), now=now)
    job = store.claim_job(worker=worker, lease_seconds=30, now=now)
    assert job.order_id == order_id
    assert (
        store.begin_action(ClaimHolder(order_id, worker=worker, job_id=job.id, now=now, lease_seconds=30), SAVE).status
        == "acquired"
    )
    return job


def test_card_claims_let_one_order_at_a_time_save_a_customers_card(store):
    def claim(customer, card, order, worker, job_id, now):
        return store.claim_card(
            ClaimHolder(order, worker=worker, job_id=job_id, now=now, lease_seconds=30), customer, card
        )

    first = _saving(store, "o1", "w1", T0)
    got = claim("c1", "card-a", "o1", "w1", first.id, T0)
    assert got == CardClaim("acquired", fresh=True)
    assert claim("c1", "card-a", "o2", "w2", 99, T0 + 1) == CardClaim("busy", holder="o1")
    assert claim("c1", "", "o3", "w2", 99, T0 + 1).status == "busy"  # an unidentified card may be it
    assert claim("c1", "card-b", "o4", "w2", 98, T0 + 1) == CardClaim("acquired", fresh=True)  # another card
    assert claim("c2", "card-a", "o5", "w2", 97, T0 + 1).status == "acquired"  # another customer
    assert store.heartbeat(first.id, worker="w1", lease_seconds=30, now=T0 + 20)
    assert claim("c1", "card-a", "o2", "w2", 99, T0 + 40).status == "busy"  # the heartbeat extended it
    # the save verified: the claim is free, and remembers the entry; the next order must read first
    assert store.finish_job(
        first.id, worker="w1", decision=replace(DECISION, wallet_entry_id="w9"), now=T0 + 41, action=SAVE
    )
    again = claim("c1", "card-a", "o2", "w2", 99, T0 + 42)
    assert again == CardClaim("acquired", fresh=False, wallet_entry_id="w9")
    # a worker killed holding it loses it to the lease
    assert claim("c1", "card-a", "o6", "w3", 96, T0 + 50).status == "busy"
    assert claim("c1", "card-a", "o6", "w3", 96, T0 + 73).status == "acquired"


def test_an_uncertain_save_keeps_its_card_until_its_next_attempt_or_the_hold(store):
    job = _saving(store, "o1", "w1", T0)
    assert store.claim_card(ClaimHolder("o1", worker="w1", job_id=job.id, now=T0, lease_seconds=30), "c1", "k").fresh
    store.release_action(
        ClaimHolder("o1", worker="w1", job_id=job.id, now=T0 + 1, lease_seconds=30),
        SAVE,
        uncertain=True,
        hold_until=T0 + 100,
    )
    other = store.claim_card(ClaimHolder("o2", worker="w2", job_id=9, now=T0 + 60, lease_seconds=30), "c1", "k")
    assert other == CardClaim("busy", holder="o1")  # past the job's lease, within the hold
    mine = store.claim_card(ClaimHolder("o1", worker="w3", job_id=job.id, now=T0 + 61, lease_seconds=30), "c1", "k")
    assert mine.status == "acquired" and not mine.fresh  # the order's next attempt: look first
    store.release_action(
        ClaimHolder("o1", worker="w3", job_id=job.id, now=T0 + 62, lease_seconds=30), SAVE, uncertain=False
    )  # not even held: a no-op
    assert (
        store.claim_card(ClaimHolder("o2", worker="w2", job_id=9, now=T0 + 63, lease_seconds=30), "c1", "k").status
        == "busy"
    )
    store.begin_action(ClaimHolder("o1", worker="w3", job_id=job.id, now=T0 + 64, lease_seconds=30), SAVE)
    store.release_action(
        ClaimHolder("o1", worker="w3", job_id=job.id, now=T0 + 65, lease_seconds=30), SAVE, uncertain=False
    )  # known to have failed
    assert (
        store.claim_card(ClaimHolder("o2", worker="w2", job_id=9, now=T0 + 66, lease_seconds=30), "c1", "k").status
        == "acquired"
    )


def test_a_lease_has_one_owner_until_released_or_expired(store):
    assert store.take_lease("circuit:h1", owner="a", seconds=60, now=T0)
    assert not store.take_lease("circuit:h1", owner="b", seconds=60, now=T0 + 1)
    assert store.take_lease("circuit:h2", owner="b", seconds=60, now=T0 + 1)
    assert store.take_lease("circuit:h1", owner="a", seconds=60, now=T0 + 2)  # its owner extends it
    store.release_lease("circuit:h1", owner="b")  # not b's: nothing happens
    assert not store.take_lease("circuit:h1", owner="b", seconds=60, now=T0 + 3)
    assert store.take_lease("circuit:h1", owner="b", seconds=60, now=T0 + 63)  # expired
    store.release_lease("circuit:h1", owner="b")
    assert store.take_lease("circuit:h1", owner="a", seconds=60, now=T0 + 64)


def test_prune_never_removes_a_job_requeued_while_it_runs(store_factory):
    """A requeue that commits while a prune batch runs keeps its job (PostgreSQL reads committed
    rows statement by statement: the prune's choice must not outlive the job's state)."""
    store, requeuer = store_factory(), store_factory()
    rec = store.record_delivery(delivery(), now=T0)
    job = store.claim_job(worker="w", lease_seconds=30, now=T0)
    assert store.dead_letter(job.id, worker="w", error="gave up", decision=DECISION, now=T0 + 1)
    pruned = []
    with requeuer._tx() as c:  # the requeue's statement, its transaction held open
        assert (
            c.run(
                "UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = ?, finished_at = NULL"
                " WHERE id = ? AND state = 'dead'",
                (T0 + 20, job.id),
            )
            == 1
        )
        t = threading.Thread(
            target=lambda: pruned.append(
                store.prune(bodies_before=T0 + 10, records_before=T0 + 10, limit=10, now=T0 + 20)
            )
        )
        t.start()
        t.join(timeout=1.0)  # the prune runs meanwhile (on SQLite it waits for the write lock)
    t.join(timeout=10)
    assert not t.is_alive()
    assert store.job_state(job.id) == "pending"
    got = store.get_delivery(rec.delivery_id)
    assert got is not None and got.body == delivery().body
    again = store.claim_job(worker="w2", lease_seconds=30, now=T0 + 21)
    assert again is not None and again.id == job.id and again.body == delivery().body


# --- the claim's commits (issue 22) ------------------------------------------------------------
def test_begin_save_takes_the_action_and_the_card_in_one_transaction(store):
    def save(order, worker, customer=("c1", "card-a"), now=T0):
        return store.begin_save(ClaimHolder(order, worker=worker, job_id=1, now=now, lease_seconds=30), customer)

    assert save("o1", "w1") == (ActionClaim("acquired"), CardClaim("acquired", fresh=True))
    # another order of the card: it gets the action, finds the card busy, and gives the action
    # back in the same transaction (nothing of it is left held)
    assert save("o2", "w2") == (ActionClaim("acquired"), CardClaim("busy", holder="o1"))
    assert store.action_state("o2", SAVE) == "open"
    assert (
        store.begin_action(ClaimHolder("o2", worker="w3", job_id=2, now=T0 + 1, lease_seconds=30), SAVE).status
        == "acquired"
    )
    # the action busy or done: no card is claimed
    assert save("o1", "w9", customer=("c1", "card-b")) == (ActionClaim("busy"), None)
    assert store.claim_card(ClaimHolder("o5", worker="w5", job_id=5, now=T0, lease_seconds=30), "c1", "card-b").fresh
    # no customer: the action only
    assert save("o3", "w3", customer=None) == (ActionClaim("acquired"), None)
    # a dead holder's action comes back uncertain, and a busy card gives it back still uncertain
    assert save("o4", "w4", customer=("c2", "x")) == (ActionClaim("acquired"), CardClaim("acquired", fresh=True))
    store.claim_card(ClaimHolder("o6", worker="w6", job_id=6, now=T0, lease_seconds=300), "c3", "y")
    claim, card = save("o4", "w7", customer=("c3", "y"), now=T0 + 31)
    assert claim == ActionClaim("acquired", uncertain=True) and card == CardClaim("busy", holder="o6")
    assert store.begin_action(ClaimHolder("o4", worker="w8", job_id=8, now=T0 + 32, lease_seconds=30), SAVE).uncertain


def test_the_job_claim_leaves_the_session_as_it_found_it(store):
    """The claim's commit is not waited for on PostgreSQL (SET LOCAL: that transaction only); the
    next transaction on the connection, the action claim's, is synced again (both backends: the
    claim and what follows it behave the same)."""
    store.record_delivery(delivery("o1"), now=T0)
    job = store.claim_job(worker="w1", lease_seconds=30, now=T0)
    assert job is not None and job.number == 1
    with store._tx() as c:
        if store.dialect.name == "postgres":
            assert c.one("SHOW synchronous_commit")["synchronous_commit"] == "on"
        else:
            assert c.one("PRAGMA synchronous")["synchronous"] == 2  # FULL
    assert store.claim_job(worker="w2", lease_seconds=30, now=T0 + 1) is None
    assert store.finish_job(job.id, worker="w1", decision=DECISION, now=T0 + 2)


def test_the_sqlite_job_claim_is_committed_without_waiting_for_the_disk(tmp_path, monkeypatch):
    """SQLite's counterpart of PostgreSQL's unsynced claim (`SET LOCAL synchronous_commit TO
    off`, its one-statement claim): synchronous=NORMAL for the claim's transaction only; a claim
    that fails half-way leaves the connection synced as well."""
    store = SQLiteStore(str(tmp_path / "claim.db"))
    store.migrate()
    store.record_delivery(delivery("o1"), now=T0)
    seen = []
    claim_tx = store._claim_tx

    @contextmanager
    def watching():
        with claim_tx() as c:
            seen.append(c.one("PRAGMA synchronous")["synchronous"])
            yield c

    monkeypatch.setattr(store, "_claim_tx", watching)
    job = store.claim_job(worker="w1", lease_seconds=30, now=T0)
    assert job is not None and seen == [1]  # NORMAL: the WAL is not synced at this commit
    with pytest.raises(RuntimeError), claim_tx():
        raise RuntimeError("a claim that fails half-way")
    with store._tx() as c:
        assert c.one("PRAGMA synchronous")["synchronous"] == 2  # FULL again
    assert store.finish_job(job.id, worker="w1", decision=DECISION, now=T0 + 2)


def test_the_claim_in_one_statement_does_all_the_claim_did(store):
    """Agency mode: the organization whose turn is oldest first, the expired holder's attempt
    closed, the attempt numbered on, the job's trace context and delivery read back."""
    a = Delivery.from_http(
        signed_headers(order_body("oa"), "orders.place"), order_body("oa"), secrets=SECRETS, organization="a"
    )
    b = Delivery.from_http(
        signed_headers(order_body("ob"), "orders.place"), order_body("ob"), secrets=SECRETS, organization="b"
    )
    ra = store.record_delivery(a, now=T0, trace_context={"traceparent": "00-1-2-01"})
    rb = store.record_delivery(b, now=T0 + 1)
    first = store.claim_job(worker="w1", lease_seconds=30, now=T0 + 2, organizations=["b", "a"])
    assert (first.id, first.organization, first.trace_context) == (ra.job_id, "a", {"traceparent": "00-1-2-01"})
    assert (first.attempts, first.number, first.body, first.delivery_id) == (1, 1, a.body, ra.delivery_id)
    second = store.claim_job(worker="w1", lease_seconds=30, now=T0 + 3, organizations=["a", "b"])
    assert second.id == rb.job_id and second.organization == "b"
    # a's lease runs out: taken over, the dead attempt closed, numbered on
    again = store.claim_job(worker="w2", lease_seconds=30, now=T0 + 40, organizations=["a", "b"])
    assert (again.id, again.attempts, again.number) == (ra.job_id, 2, 2)  # a's turn is the older
    attempts = store.get_delivery(again.delivery_id).attempts
    assert [x["outcome"] for x in attempts] == ["lease_expired", None]
    assert store.claim_job(worker="w3", lease_seconds=30, now=T0 + 41, organizations=[]) is None
    assert store.claim_job(worker="w3", lease_seconds=30, now=T0 + 41, organizations=["zzz"]) is None
