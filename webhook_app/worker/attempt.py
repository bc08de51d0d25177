"""One attempt at one job: what it works with, what it has seen, and how it ends.

The loop (loop.py) makes an `Attempt` for each job it claims and passes it down to whatever works
the job (process.py, save.py, reuse.py); nothing of one try is kept on the `Worker`. An attempt
carries the job, its organization's `Tenant` (mode, policy, client, credentials), the worker's
store, id, clock and random numbers, when its leases were taken, and the Commerce Layer trace ids
of the calls made while it is in progress (`note_call`). Its methods end it: finished (with the
decision recorded), deferred, retried, held, or dead-lettered.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

from webhook_app.backoff import retry_delay
from webhook_app.commercelayer import CallRecord, CommerceLayerAPI
from webhook_app.commercelayer.credentials import CredentialsGate, CredentialsRefused
from webhook_app.config import Settings
from webhook_app.errors import CommerceLayerError, storable_text
from webhook_app.events import Event
from webhook_app.policy import SAVE, USE_WALLET, Decision, Policy, wallet
from webhook_app.states import DecisionOutcome, JobResult
from webhook_app.store import ClaimHolder, DecisionRecord, Job, Store

log = logging.getLogger("webhook_app.worker")

BUSY_RETRY_SECONDS = 1.0

#: The attempt in progress in this thread (None between attempts): the clients' `on_call` reach it.
_in_progress: ContextVar[Attempt | None] = ContextVar("webhook_app_attempt", default=None)


def note_call(call: CallRecord) -> None:
    """A client's `on_call`: keep Commerce Layer's trace id of each answer on the attempt in
    progress; a call made between attempts (the credentials check at start) is noted nowhere."""
    attempt = _in_progress.get()
    if attempt is not None and call.trace_id:
        attempt.cl_trace_ids.append(call.trace_id)


def noting_trace_ids(record: Callable[[CallRecord], None]) -> Callable[[CallRecord], None]:
    """An `on_call` for the worker's clients: `record` (the metrics), then `note_call`."""

    def on_call(call: CallRecord) -> None:
        record(call)
        note_call(call)

    return on_call


@dataclass(frozen=True)
class Outcome:
    """What processing one job ended with (returned for tests and logs)."""

    state: JobResult  # done | retry | dead | lost | held (the credentials were refused: given back uncounted)
    decision: Decision | None
    outcome: DecisionOutcome | None = None
    error: str | None = None


@dataclass
class Tenant:
    """What the worker acts with for one organization (agency mode, organizations.py; or the one
    deployment's): its settings view (mode, credentials), policy, client and credentials gate."""

    settings: Settings
    policy: Policy
    client: CommerceLayerAPI | None = None
    credentials: CredentialsGate | None = None

    @property
    def mode(self) -> str:
        return "shadow" if self.settings.shadow else "enforce"


@dataclass
class Attempt:
    """One try at one job, from its claim to its record."""

    job: Job
    tenant: Tenant
    store: Store
    worker: str  # the worker's id: the leases and claims are held in its name
    clock: Callable[[], float]
    rng: random.Random
    observer: Callable[[str, dict[str, Any]], None] | None = None
    claimed_at: float = float("-inf")  # when the job was claimed (its leases' start)
    cl_trace_ids: list[str] = field(default_factory=list)  # Commerce Layer's, one per answer
    action: str | None = None  # the order's action this attempt claimed (process.enforce)
    holds_card: bool = False  # and the customer's card with it (a save)

    @property
    def settings(self) -> Settings:
        return self.tenant.settings

    @property
    def client(self) -> CommerceLayerAPI:
        """The organization's client (enforce mode only: shadow mode calls no one)."""
        assert self.tenant.client is not None
        return self.tenant.client

    @contextlib.contextmanager
    def in_progress(self) -> Iterator[None]:
        """While in the block, the clients' calls note their trace ids on this attempt."""
        token = _in_progress.set(self)
        try:
            yield
        finally:
            _in_progress.reset(token)

    # --- along the way ----------------------------------------------------------------------
    def read_order(self, event: Event) -> Event:
        """One read of the order with the wallet and each entry's payment_source linkage."""
        doc = self.client.get_order(event.order_id, include=list(wallet.READ_INCLUDES))
        return Event.from_document(event.topic, doc)

    def heartbeat(self) -> bool:
        """Right before a write to Commerce Layer is sent (the client's `confirm`, after any wait
        for a rate-limit slot): extend the leases, and say whether this attempt still holds its job
        and the claims it took (False: a worker frozen, or kept waiting, past its lease, whose
        claims another worker took over; it must send nothing). Skipped when they were taken a moment ago
        (the common case: no read before the write), which saves a commit on the way to the PATCH:
        nothing can have taken them over yet."""
        lease = self.settings.lease_seconds
        if 0 <= self.clock() - self.claimed_at < lease / 4:
            return True
        return self.store.heartbeat(
            self.job.id,
            worker=self.worker,
            lease_seconds=lease,
            now=self.clock(),
            action=self.action,
            card=self.holds_card,
        )

    def holder(self) -> ClaimHolder:
        """This attempt as the holder of its order's claims, from now for a lease."""
        job = self.job
        return ClaimHolder(
            job.order_id,
            worker=self.worker,
            job_id=job.id,
            now=self.clock(),
            lease_seconds=self.settings.lease_seconds,
            organization=job.organization,
        )

    def release(self, action: str, *, uncertain: bool, hold_until: float | None = None) -> None:
        """Give the order's action claim back; `uncertain`: the next attempt reads before writing."""
        self.store.release_action(self.holder(), action, uncertain=uncertain, hold_until=hold_until)

    # --- how it ends ------------------------------------------------------------------------
    def finish(
        self,
        decision: Decision,
        outcome: DecisionOutcome,
        *,
        wallet_entry_id: str | None = None,
        action: str | None = None,
    ) -> Outcome:
        """Record the decision and end the job; with `action`, mark the order's action done with it."""
        job = self.job
        ok = self.store.finish_job(
            job.id,
            worker=self.worker,
            decision=self._record(decision, outcome, wallet_entry_id),
            now=self.clock(),
            action=action,
        )
        if not ok:
            log.warning(
                "job lease was lost before it could be finished", extra={"job_id": job.id, "order_id": job.order_id}
            )
        self.observe("decision", decision=decision, outcome=outcome if ok else JobResult.LOST)
        return Outcome(JobResult.DONE if ok else JobResult.LOST, decision, outcome)

    def applied(self, decision: Decision, entry_id: str, action: str) -> Outcome:
        """The action is on the order, with wallet entry `entry_id`: recorded, the action done."""
        d = replace(decision, wallet_entry_id=entry_id)
        return self.finish(d, DecisionOutcome.APPLIED, wallet_entry_id=entry_id, action=action)

    def guarded(self, decision: Decision, action: str) -> Outcome:
        """A guard found after claiming the action: give the claim back unchanged, record why."""
        self.release(action, uncertain=False)
        return self.finish(decision, DecisionOutcome.GUARDED)

    def lost(self, decision: Decision) -> Outcome:
        """The job or its claims were taken over while this worker was away (frozen past its
        lease): nothing is sent. A job still this worker's (another job of the order took the
        action over) is given back at once, uncounted, to find the other job's outcome."""
        job = self.job
        why = "claims taken over before the call to Commerce Layer: not sent"
        log.warning(why, extra={"job_id": job.id, "order_id": job.order_id, "action": decision.action})
        if self.action is not None:  # what is still ours goes back (as uncertain: an earlier try may have sent)
            self.release(self.action, uncertain=True)
        mine = self.store.retry_job(
            job.id, worker=self.worker, error=why, next_attempt_at=self.clock(), now=self.clock(), count_attempt=False
        )
        self.observe("decision", decision=decision, outcome=JobResult.RETRY if mine else JobResult.LOST)
        return Outcome(JobResult.RETRY if mine else JobResult.LOST, decision, error=why)

    def defer(self, decision: Decision, why: str) -> Outcome:
        """Another worker holds what this job needs: try again shortly, without using an attempt."""
        self._retry(why, self.clock() + BUSY_RETRY_SECONDS, count_attempt=False)
        return Outcome(JobResult.RETRY, decision, error="busy")

    def failed(self, decision: Decision, exc: CommerceLayerError) -> Outcome:
        """Commerce Layer refused or failed the call: held (refused credentials), retried or dead."""
        error = storable_text(str(exc))
        credentials = self.tenant.credentials
        if isinstance(exc, CredentialsRefused) and credentials is not None:
            # The deployment's fault, not the order's: back to pending, this attempt not counted.
            self._retry(error, self.clock(), count_attempt=False)
            credentials.refused(exc)
            self.observe("held", decision=decision, error=error)
            return Outcome(JobResult.HELD, decision, error=error)
        if exc.retryable and self.job.attempts < self.settings.max_attempts:
            delay = self._backoff(exc.retry_after)
            if exc.uncertain:
                # The change may still land after we gave up waiting: look no sooner than one read
                # timeout later, so the check before writing again sees it.
                delay = max(delay, self.settings.cl_read_timeout)
            return self.retry(error, delay, decision)
        why = "attempts exhausted" if exc.retryable else "permanent error"
        return self.dead(f"{why}: {error}", decision)

    def unexpected(self, error: str) -> Outcome:
        """An error no step expected: retried with backoff like a failed call, dead at the limit."""
        # The call may have reached Commerce Layer before the failure: look before writing again.
        for action in (SAVE, USE_WALLET):
            self.release(action, uncertain=True)
        if self.job.attempts >= self.settings.max_attempts:
            return self.dead(f"attempts exhausted: {error}", None)
        return self.retry(error, self._backoff(None), None)

    def retry(self, error: str, delay: float, decision: Decision | None) -> Outcome:
        """Back to pending for `delay` seconds, this attempt counted."""
        self._retry(error, self.clock() + delay)
        self.observe("retry", decision=decision, error=error, delay=round(delay, 3))
        return Outcome(JobResult.RETRY, decision, error=error)

    def dead(self, error: str, decision: Decision | None) -> Outcome:
        """Dead-letter the job with `error` (and the decision, when one was made)."""
        error = storable_text(error)
        record = self._record(decision, DecisionOutcome.FAILED) if decision is not None else None
        ok = self.store.dead_letter(self.job.id, worker=self.worker, error=error, decision=record, now=self.clock())
        self.observe("dead_letter", decision=decision, error=error)
        return Outcome(JobResult.DEAD if ok else JobResult.LOST, decision, DecisionOutcome.FAILED, error)

    def observe(self, what: str, *, decision: Decision | None = None, **extra: Any) -> None:
        """Log the event and hand it to the observer (metrics)."""
        job = self.job
        fields: dict[str, Any] = {
            "job_id": job.id,
            "order_id": job.order_id,
            "topic": job.topic,
            "attempt": job.attempts,
            "worker": self.worker,
            **extra,
        }
        if job.organization:
            fields["organization"] = job.organization
        if decision is not None:
            fields.update(rule=decision.rule, action=decision.action, guard=decision.guard)
        level = logging.WARNING if what == "dead_letter" else logging.INFO
        log.log(level, what, extra=fields)
        if self.observer is not None:
            self.observer(what, fields)

    def _retry(self, error: str, at: float, *, count_attempt: bool = True) -> None:
        self.store.retry_job(
            self.job.id,
            worker=self.worker,
            error=error,
            next_attempt_at=at,
            now=self.clock(),
            count_attempt=count_attempt,
        )

    def _backoff(self, retry_after: float | None) -> float:
        s = self.settings
        return retry_delay(
            self.job.attempts, base=s.retry_base_seconds, cap=s.retry_max_seconds, retry_after=retry_after, rng=self.rng
        )

    def _record(
        self, decision: Decision, outcome: DecisionOutcome, wallet_entry_id: str | None = None
    ) -> DecisionRecord:
        return DecisionRecord(
            rule=decision.rule,
            action=decision.action,
            reason=decision.reason,
            outcome=outcome,
            mode=self.tenant.mode,
            guard=decision.guard,
            wallet_entry_id=wallet_entry_id or decision.wallet_entry_id,
        )
