"""The attempt owns its Commerce Layer trace ids: an `on_call` made before any worker exists
notes each answer's id on the attempt in progress in this thread, and nowhere between attempts."""

from __future__ import annotations

import random
import threading

from webhook_app.commercelayer import CallRecord
from webhook_app.policy import load_policy
from webhook_app.store import Job
from webhook_app.worker import Attempt, Tenant, noting_trace_ids


def _attempt(settings, store, job_id: int) -> Attempt:
    job = Job(job_id, 1, f"ORD{job_id}", "orders.place", 1, b"{}", 0.0, 60.0)
    tenant = Tenant(settings, load_policy(settings.policy_path))
    return Attempt(job, tenant, store, "w1", lambda: 0.0, random.Random(1))


def _call(trace_id: str | None) -> CallRecord:
    return CallRecord("GET", "orders", 200, 0.01, 0.0, trace_id)


def test_each_call_is_recorded_and_its_trace_id_noted_on_the_attempt_in_progress(settings_factory, sqlite_store):
    settings = settings_factory(mode="shadow")
    recorded: list[CallRecord] = []
    on_call = noting_trace_ids(recorded.append)  # as run_worker builds it, before any worker
    first, second = _attempt(settings, sqlite_store, 1), _attempt(settings, sqlite_store, 2)
    on_call(_call("before"))
    with first.in_progress():
        on_call(_call("a1"))
        on_call(_call(None))  # an answer without meta.trace_id
        on_call(_call("a2"))
    on_call(_call("between"))
    with second.in_progress():
        on_call(_call("b1"))
    assert first.cl_trace_ids == ["a1", "a2"] and second.cl_trace_ids == ["b1"]
    assert len(recorded) == 6  # the metrics see every call, in an attempt or not


def test_an_attempt_in_another_thread_does_not_collect_this_threads_calls(settings_factory, sqlite_store):
    settings = settings_factory(mode="shadow")
    mine, theirs = _attempt(settings, sqlite_store, 1), _attempt(settings, sqlite_store, 2)
    on_call = noting_trace_ids(lambda call: None)
    entered, done = threading.Event(), threading.Event()

    def other() -> None:
        with theirs.in_progress():
            entered.set()
            done.wait(5)

    t = threading.Thread(target=other)
    t.start()
    assert entered.wait(5)
    with mine.in_progress():
        on_call(_call("mine"))
    done.set()
    t.join(5)
    assert mine.cl_trace_ids == ["mine"] and theirs.cl_trace_ids == []
