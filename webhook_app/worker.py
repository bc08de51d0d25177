"""The worker: claim a job, decide by the policy, act on Commerce Layer, record the outcome.

Jobs are leased; a worker that dies loses its lease and another worker takes the job again.
Retryable failures come back after an exponential backoff with jitter (never sooner than a
`Retry-After`), up to `max_attempts`; then the job is dead-lettered with the reason.
Exactly one successful PATCH per order and action: the store's `(order_id, action)` claim lets
one call be in flight and remembers when it is done; after an attempt whose outcome is unknown
(timeout, 5xx, killed worker) the next one reads the order first and does not write again if the
change is already there.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webhook_app.commercelayer import CommerceLayerClient
from webhook_app.config import Settings
from webhook_app.errors import CommerceLayerError, InvalidPayload, StoreError
from webhook_app.events import Event, Resource
from webhook_app.policy import SAVE, Decision, Policy, choose_wallet_entry
from webhook_app.store import DecisionRecord, Job, Store

log = logging.getLogger(__name__)

WALLET_INCLUDE = "available_customer_payment_sources"
BUSY_RETRY_SECONDS = 1.0


def retry_delay(attempt: int, *, base: float, cap: float, retry_after: float | None = None,
                rng: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped; >= Retry-After."""
    r = rng or random
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    delay = ceiling / 2 + r.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Outcome:
    """What processing one job ended with (returned for tests and logs)."""

    state: str  # done | retry | dead | lost
    decision: Decision | None
    outcome: str | None = None
    error: str | None = None


class Worker:
    def __init__(
        self,
        *,
        store: Store,
        policy: Policy,
        settings: Settings,
        client: CommerceLayerClient | None = None,
        clock: Callable[[], float] = time.time,
        worker_id: str | None = None,
        rng: random.Random | None = None,
        observer: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        if not settings.shadow and client is None:
            raise ValueError("enforce mode needs a Commerce Layer client")
        self.store = store
        self.policy = policy
        self.settings = settings
        self.client = client
        self.clock = clock
        self.id = worker_id or new_worker_id()
        self.rng = rng or random.Random()
        self.observer = observer
        self.mode = "shadow" if settings.shadow else "enforce"

    # --- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set; finishes the job in hand before returning."""
        log.info("worker started", extra={"worker": self.id, "mode": self.mode})
        failures = 0
        while not stop.is_set():
            try:
                busy = self.run_once() is not None
                failures = 0
            except StoreError as exc:
                failures += 1
                wait = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("store unavailable, worker waiting", extra={"error": str(exc), "wait": wait})
                stop.wait(wait)
                continue
            if not busy:
                stop.wait(self.settings.poll_interval)
        log.info("worker stopped", extra={"worker": self.id})

    def run_once(self) -> Outcome | None:
        """Claim and process one due job; None when nothing is due."""
        job = self.store.claim_job(worker=self.id, lease_seconds=self.settings.lease_seconds, now=self.clock())
        if job is None:
            return None
        return self.process(job)

    def drain(self, limit: int = 10_000) -> list[Outcome]:
        """Process due jobs until none is left (tests and `worker --once`)."""
        out = []
        for _ in range(limit):
            o = self.run_once()
            if o is None:
                break
            out.append(o)
        return out

    # --- one job ----------------------------------------------------------------------------
    def process(self, job: Job) -> Outcome:
        try:
            event = Event.from_body(job.topic, job.body, max_depth=self.settings.max_json_depth)
        except InvalidPayload as exc:  # intake checked it; a corrupt row is not worth retrying
            return self._dead(job, f"stored body no longer parses: {exc}", None)
        decision = self.policy.decide(event)
        if not decision.calls_commerce_layer:
            return self._finish(job, decision, "guarded" if decision.guard else "skipped")
        if self.settings.shadow:
            if self.store.action_state(job.order_id, decision.action) == "done":
                return self._finish(job, decision.guarded("already_flagged", "the order was already flagged"),
                                    "guarded")
            return self._finish(job, decision, "shadow")
        return self._enforce(job, event, decision)

    def _enforce(self, job: Job, event: Event, decision: Decision) -> Outcome:
        assert self.client is not None
        order_id, action = job.order_id, decision.action
        claim = self.store.begin_action(order_id, action, worker=self.id, job_id=job.id,
                                        lease_seconds=self.settings.lease_seconds, now=self.clock())
        if claim.status == "done":
            d = decision.guarded("already_flagged", "the order was already flagged for this action")
            return self._finish(job, d, "guarded", wallet_entry_id=claim.wallet_entry_id)
        if claim.status == "busy":
            self.store.retry_job(job.id, worker=self.id, error="another worker is flagging this order",
                                 next_attempt_at=self.clock() + BUSY_RETRY_SECONDS, now=self.clock(),
                                 count_attempt=False)
            return Outcome("retry", decision, error="busy")
        try:
            entry_id: str | None
            if claim.uncertain:
                entry_id = self._already_applied(event, decision)
                if entry_id is not None:
                    d = Decision(decision.action, decision.rule,
                                 f"{decision.reason}; an earlier attempt had already applied it",
                                 decision.strategy, None, entry_id)
                    return self._finish(job, d, "applied", wallet_entry_id=entry_id, action=action)
            self.store.heartbeat(job.id, worker=self.id, lease_seconds=self.settings.lease_seconds,
                                 now=self.clock())
            if action == SAVE:
                doc = self.client.update_order(order_id, {"_save_payment_source_to_customer_wallet": True},
                                               include=[WALLET_INCLUDE])
                entry_id = saved_entry_id(doc, event)
            else:
                entry_id = decision.wallet_entry_id or self._pick_wallet_entry(event, decision)
                if entry_id is None:
                    self.store.release_action(order_id, action, worker=self.id, uncertain=False, now=self.clock())
                    d = decision.guarded("no_wallet_entry", "the customer's wallet has no entry that fits")
                    return self._finish(job, d, "guarded")
                self.client.update_order(order_id, {"_customer_payment_source_id": entry_id})
        except CommerceLayerError as exc:
            self.store.release_action(order_id, action, worker=self.id, uncertain=exc.uncertain, now=self.clock())
            return self._failed(job, decision, exc)
        return self._finish(job, Decision(decision.action, decision.rule, decision.reason, decision.strategy,
                                          None, entry_id), "applied", wallet_entry_id=entry_id, action=action)

    def _already_applied(self, event: Event, decision: Decision) -> str | None:
        """After an uncertain attempt: read the order and tell whether the change is there."""
        assert self.client is not None
        doc = self.client.get_order(event.order_id, include=[WALLET_INCLUDE, "payment_source"])
        current = Event.from_document(event.topic, doc)
        if decision.action == SAVE:
            return saved_entry_id(doc, event, only_matching=True)
        wanted = decision.wallet_entry_id
        if wanted and current.payment_source is not None and current.wallet:
            for entry in current.wallet:
                link = entry.linkage("payment_source")
                if entry.id == wanted and isinstance(link, dict) and link.get("id") == current.payment_source.id:
                    return wanted
        return None

    def _pick_wallet_entry(self, event: Event, decision: Decision) -> str | None:
        assert self.client is not None
        doc = self.client.get_order(event.order_id, include=[WALLET_INCLUDE])
        wallet = Event.from_document(event.topic, doc).wallet or ()
        chosen = choose_wallet_entry(wallet, decision.strategy or "newest")
        return chosen.id if chosen else None

    # --- recording --------------------------------------------------------------------------
    def _record(self, decision: Decision, outcome: str, wallet_entry_id: str | None = None) -> DecisionRecord:
        return DecisionRecord(rule=decision.rule, action=decision.action, reason=decision.reason, outcome=outcome,
                              mode=self.mode, guard=decision.guard,
                              wallet_entry_id=wallet_entry_id or decision.wallet_entry_id)

    def _finish(self, job: Job, decision: Decision, outcome: str, *, wallet_entry_id: str | None = None,
                action: str | None = None) -> Outcome:
        """Record the decision and end the job; with `action`, mark the order's action done with it."""
        ok = self.store.finish_job(job.id, worker=self.id, decision=self._record(decision, outcome, wallet_entry_id),
                                   now=self.clock(), action=action)
        if not ok:
            log.warning("job lease was lost before it could be finished", extra={"job_id": job.id,
                                                                                 "order_id": job.order_id})
        self._observe("decision", job, decision=decision, outcome=outcome if ok else "lost")
        return Outcome("done" if ok else "lost", decision, outcome)

    def _failed(self, job: Job, decision: Decision, exc: CommerceLayerError) -> Outcome:
        error = str(exc)
        if exc.retryable and job.attempts < self.settings.max_attempts:
            delay = retry_delay(job.attempts, base=self.settings.retry_base_seconds,
                                cap=self.settings.retry_max_seconds, retry_after=exc.retry_after, rng=self.rng)
            if exc.uncertain:
                # The change may still land after we gave up waiting: look no sooner than one read
                # timeout later, so the check before writing again sees it.
                delay = max(delay, self.settings.cl_read_timeout)
            self.store.retry_job(job.id, worker=self.id, error=error, next_attempt_at=self.clock() + delay,
                                 now=self.clock())
            self._observe("retry", job, decision=decision, error=error, delay=round(delay, 3))
            return Outcome("retry", decision, error=error)
        why = "attempts exhausted" if exc.retryable else "permanent error"
        return self._dead(job, f"{why}: {error}", decision)

    def _dead(self, job: Job, error: str, decision: Decision | None) -> Outcome:
        record = self._record(decision, "failed") if decision is not None else None
        ok = self.store.dead_letter(job.id, worker=self.id, error=error, decision=record, now=self.clock())
        self._observe("dead_letter", job, decision=decision, error=error)
        return Outcome("dead" if ok else "lost", decision, "failed", error)

    def _observe(self, what: str, job: Job, *, decision: Decision | None = None, **extra: Any) -> None:
        fields: dict[str, Any] = {"job_id": job.id, "order_id": job.order_id, "topic": job.topic,
                                  "attempt": job.attempts, "worker": self.id, **extra}
        if decision is not None:
            fields.update(rule=decision.rule, action=decision.action, guard=decision.guard)
        level = logging.WARNING if what == "dead_letter" else logging.INFO
        log.log(level, what, extra=fields)
        if self.observer is not None:
            self.observer(what, fields)


def saved_entry_id(doc: dict[str, Any], event: Event, *, only_matching: bool = False) -> str | None:
    """The wallet entry the PATCH answer shows for this order's payment source.

    Prefer the entry whose `payment_source` linkage is the order's payment source; otherwise (the
    linkage is not in the answer) the newest entry that was not in the wallet before.
    """
    answer = Event.from_document(event.topic, doc)
    entries: tuple[Resource, ...] = answer.wallet or ()
    source_id = event.payment_source.id if event.payment_source else None
    for entry in entries:
        link = entry.linkage("payment_source")
        if source_id and isinstance(link, dict) and link.get("id") == source_id:
            return entry.id
    if only_matching:
        return None
    before = {e.id for e in event.wallet or ()}
    fresh = [e for e in entries if e.id not in before]
    chosen = choose_wallet_entry(fresh, "newest")
    return chosen.id if chosen else None
