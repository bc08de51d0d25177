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

import contextlib
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from webhook_app import claims, tracing
from webhook_app.backoff import doubling, retry_delay
from webhook_app.commercelayer import CallRecord, CommerceLayerAPI
from webhook_app.commercelayer.credentials import CredentialsGate, CredentialsRefused, status_name
from webhook_app.config import Settings
from webhook_app.errors import CommerceLayerError, InvalidPayload, StoreError, StoreUnavailable, storable_text
from webhook_app.events import Event
from webhook_app.policy import SAVE, USE_WALLET, Decision, Policy, choose_wallet_entry, expiry, wallet
from webhook_app.policy.guards import save_guards
from webhook_app.states import ActionState, ClaimStatus, DecisionOutcome, JobResult
from webhook_app.store import DecisionRecord, Job, Store, retention

log = logging.getLogger(__name__)

BUSY_RETRY_SECONDS = 1.0
# A save Commerce Layer answered without error, after which no wallet entry for the source appears.
SAVED_WITHOUT_ENTRY = DecisionOutcome.SAVED_WITHOUT_ENTRY
PRUNE_BATCHES_PER_TICK = 4
# How often a polling worker records that it is alive (the `worker` row of `Store.set_status`, its
# `updated_at`): `doctor` calls a worker silent for a minute not running.
HEARTBEAT = "worker"
HEARTBEAT_SECONDS = 10.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Outcome:
    """What processing one job ended with (returned for tests and logs)."""

    state: JobResult  # done | retry | dead | lost | held (the credentials were refused: given back uncounted)
    decision: Decision | None
    outcome: DecisionOutcome | None = None
    error: str | None = None


@dataclass
class Tenant:
    """Agency mode: what the worker acts with for one organization (organizations.py): its
    settings view (mode, credentials), policy, client and credentials gate."""

    settings: Settings
    policy: Policy
    client: CommerceLayerAPI | None = None
    credentials: CredentialsGate | None = None


@dataclass(frozen=True)
class Handled:
    """What a job about no order (a topic handler's) came to: recorded as its decision; `observe`
    goes to the observer as a `handled` event (metrics)."""

    decision: Decision
    outcome: DecisionOutcome
    observe: Mapping[str, Any] = field(default_factory=dict)


#: Works one job whose topic is not an order event's (the runtime passes ops/anonymization.py's);
#: `(job, now) -> Handled`. A StoreError is retried like any job's failure; InvalidPayload (the
#: stored body no longer parses) dead-letters it.
TopicHandler = Callable[[Job, float], Handled]


class Worker:
    def __init__(
        self,
        *,
        store: Store,
        policy: Policy,
        settings: Settings,
        client: CommerceLayerAPI | None = None,
        clock: Callable[[], float] = time.time,
        worker_id: str | None = None,
        rng: random.Random | None = None,
        observer: Callable[[str, dict[str, Any]], None] | None = None,
        on_poll: Callable[[float], None] | None = None,
        handlers: Mapping[str, TopicHandler] | None = None,
        credentials: CredentialsGate | None = None,
        tenants: Mapping[str, Tenant] | None = None,
    ) -> None:
        if not settings.shadow and client is None and tenants is None:
            raise ValueError("enforce mode needs a Commerce Layer client")
        self.store = store
        self.policy = policy
        self.settings = settings
        self.client = client
        self.clock = clock
        self.id = worker_id or new_worker_id()
        self.rng = rng or random.Random()
        self.observer = observer
        self.on_poll = on_poll
        self.handlers = dict(handlers or {})
        self._cl_trace_ids: list[str] = []
        self.mode = "shadow" if settings.shadow else "enforce"
        self._claimed_at = float("-inf")  # when run_once claimed the job in hand (its leases' start)
        self._next_prune = 0.0  # the first prune runs soon after start
        self._next_beat = 0.0  # the first heartbeat is written at the first poll
        # Enforce mode: no job is attempted while Commerce Layer refuses the credentials.
        self.credentials = credentials or (
            None
            if client is None or settings.shadow
            else CredentialsGate(
                client=client,
                store=store,
                source=self.id,
                clock=clock,
                delay=lambda n: retry_delay(n, base=1.0, cap=60.0, rng=self.rng),
                auth_url=settings.cl_auth_url,
            )
        )
        # Agency mode: one Tenant per organization; each job is worked with its organization's.
        self.tenants: dict[str, Tenant] | None = None
        if tenants is not None:
            self.tenants = dict(tenants)
            for slug, t in self.tenants.items():
                if t.credentials is None and t.client is not None and not t.settings.shadow:
                    t.credentials = CredentialsGate(
                        client=t.client,
                        store=store,
                        source=self.id,
                        clock=clock,
                        delay=lambda n: retry_delay(n, base=1.0, cap=60.0, rng=self.rng),
                        auth_url=t.settings.cl_auth_url,
                        name=status_name(slug),
                        organization=slug or "default",
                    )

    # --- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set; finishes the job in hand before returning."""
        if self.tenants is None:
            log.info("worker started", extra={"worker": self.id, "mode": self.mode})
        else:  # agency mode: each organization's own mode (the deployment's describes none of them)
            modes = {slug or "default": t.settings.mode for slug, t in self.tenants.items()}
            log.info("worker started", extra={"worker": self.id, "mode": "agency", "organizations": modes})
        failures = 0
        while not stop.is_set():
            if self.on_poll is not None:
                self.on_poll(self.clock())
            try:
                busy = self.run_once() is not None
                failures = 0
            except StoreError as exc:
                failures += 1
                wait = doubling(failures, base=1.0, cap=30.0)
                log.warning("store unavailable, worker waiting", extra={"error": str(exc), "wait": wait})
                stop.wait(wait)
                continue
            except Exception as exc:  # recording a job's failure failed: never die for it
                failures += 1
                wait = doubling(failures, base=1.0, cap=30.0)
                log.exception("worker loop error, waiting", extra={"error": _describe(exc), "wait": wait})
                stop.wait(wait)
                continue
            self.maybe_prune()
            self.maybe_heartbeat()
            if not busy:
                self._idle(stop)
        log.info("worker stopped", extra={"worker": self.id})

    def _idle(self, stop: threading.Event) -> None:
        """Wait for the store's wake-up (a job committed), at most the poll interval; `stop` is
        looked at every half second."""
        deadline = time.monotonic() + self.settings.poll_interval
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self.store.wait_for_jobs(min(left, 0.5)):
                return

    def maybe_heartbeat(self) -> None:
        """Every HEARTBEAT_SECONDS, record in the store that a worker polls (`doctor` reads it,
        whichever host it runs on). A failure is logged; the loop's store checks do the rest."""
        now = self.clock()
        if now < self._next_beat:
            return
        self._next_beat = now + HEARTBEAT_SECONDS
        try:
            self.store.set_status(HEARTBEAT, "polling", reason=None, source=self.id, now=now)
        except StoreError as exc:
            log.warning("heartbeat not recorded", extra={"error": str(exc)})

    def maybe_prune(self) -> retention.PruneReport | None:
        """Between jobs, when due: a few prune batches (a backlog is worked off tick by tick, so
        jobs wait at most a few batches). A failure is logged and tried again next interval."""
        now = self.clock()
        if now < self._next_prune:
            return None
        try:
            report = retention.prune_and_record(
                self.store, self.settings, now=now, by=f"worker {self.id}", max_batches=PRUNE_BATCHES_PER_TICK
            )
        except Exception as exc:  # noqa: BLE001 - pruning must never stop the worker
            log.warning("prune failed", extra={"error": _describe(exc)})
            self._next_prune = now + self.settings.prune_interval
            return None
        self._next_prune = now + (self.settings.prune_interval if report.complete else 1.0)
        return report

    def run_once(self) -> Outcome | None:
        """Claim and process one due job; None when nothing is due (or the credentials are refused)."""
        if self.tenants is not None:
            # Agency mode: organizations take turns (Store.claim_job); one whose credentials are
            # refused is left out until Commerce Layer accepts them again, the others go on.
            ready = [slug for slug, t in self.tenants.items() if t.credentials is None or not t.credentials.holding()]
            job = self.store.claim_job(
                worker=self.id, lease_seconds=self.settings.lease_seconds, now=self.clock(), organizations=ready
            )
            if job is None:
                return None
            self._enter(self.tenants[job.organization])
        else:
            if self.credentials is not None and self.credentials.holding():
                return None
            job = self.store.claim_job(worker=self.id, lease_seconds=self.settings.lease_seconds, now=self.clock())
            if job is None:
                return None
        self._claimed_at = self.clock()
        if job.attempts > self.settings.max_attempts:
            # Only a worker that died with the job in hand (its lease ran out) gets a job here:
            # every failure it records dead-letters at the limit.
            return self._dead(
                job,
                f"attempts exhausted: {job.attempts - 1} attempts, the last ones ended by their lease running out"
                " (a worker died processing the job)",
                None,
            )
        return self.process_contained(job)

    def _enter(self, t: Tenant) -> None:
        """Work the job in hand as its organization: its mode, policy, client and credentials."""
        self.settings, self.policy, self.client, self.credentials = t.settings, t.policy, t.client, t.credentials
        self.mode = "shadow" if t.settings.shadow else "enforce"

    def check_credentials_at_start(self) -> None:
        """One line per organization (or the one) whose credentials are used: accepted or refused."""
        gates = [t.credentials for t in self.tenants.values()] if self.tenants is not None else [self.credentials]
        for gate in gates:
            if gate is not None:
                gate.check_at_start()

    def process_contained(self, job: Job) -> Outcome:
        """`process`, with any exception caught for this job: recorded, counted, retried with
        backoff and dead-lettered at `max_attempts`. Only an unreachable store escapes (the run
        loop waits for it; the job's lease runs out and the attempt still counts)."""
        try:
            return self.process(job)
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - one job must never stop the worker
            return self._unexpected(job, exc)

    def _unexpected(self, job: Job, exc: Exception) -> Outcome:
        error = f"unexpected error: {_describe(exc)}"
        log.error("job failed unexpectedly", exc_info=exc, extra={"job_id": job.id, "order_id": job.order_id})
        # The call may have reached Commerce Layer before the failure: look before writing again.
        for action in (SAVE, USE_WALLET):
            self.store.release_action(
                job.order_id, action, worker=self.id, uncertain=True, now=self.clock(), organization=job.organization
            )
        if job.attempts >= self.settings.max_attempts:
            return self._dead(job, f"attempts exhausted: {error}", None)
        delay = retry_delay(
            job.attempts, base=self.settings.retry_base_seconds, cap=self.settings.retry_max_seconds, rng=self.rng
        )
        self.store.retry_job(
            job.id, worker=self.id, error=error, next_attempt_at=self.clock() + delay, now=self.clock()
        )
        self._observe("retry", job, error=error, delay=round(delay, 3))
        return Outcome(JobResult.RETRY, None, error=error)

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
    def note_call(self, call: CallRecord) -> None:
        """The client's `on_call`: keep Commerce Layer's trace id of each answer for the attempt."""
        if call.trace_id:
            self._cl_trace_ids.append(call.trace_id)

    def process(self, job: Job) -> Outcome:
        """One attempt, in a span continuing the intake's trace; the trace ids noted on the attempt."""
        self._cl_trace_ids = []
        attrs = {
            "webhook_app.job_id": job.id,
            "webhook_app.order_id": job.order_id,
            "webhook_app.attempt": job.number,
        }
        with tracing.span("job attempt", kind="consumer", parent=job.trace_context, attributes=attrs) as span:
            outcome = self._process(job)
            span.set("webhook_app.outcome", outcome.outcome or outcome.state)
        # This attempt's own: taken, and the list started afresh for whatever calls come next.
        cl_trace_ids, self._cl_trace_ids = self._cl_trace_ids, []
        if span.trace_id or cl_trace_ids:
            try:
                self.store.record_attempt_traces(job.id, job.number, trace_id=span.trace_id, cl_trace_ids=cl_trace_ids)
            except StoreError as exc:
                log.warning("trace ids not recorded", extra={"job_id": job.id, "error": str(exc)})
        return outcome

    def _process(self, job: Job) -> Outcome:
        handler = self.handlers.get(job.topic)
        if handler is not None:
            return self._handle(job, handler)
        if not job.order_id:  # a job about no order, and this worker has no handler for its topic
            return self._dead(job, f"no handler for topic {job.topic} in this worker", None)
        try:
            event = Event.from_body(job.topic, job.body, max_depth=self.settings.max_json_depth)
        except InvalidPayload as exc:  # intake checked it; a corrupt row is not worth retrying
            return self._dead(job, f"stored body no longer parses: {exc}", None)
        with time_budget(self.settings.decide_budget):
            decision = self.policy.decide(event)
        if not decision.calls_commerce_layer:
            return self._finish(job, decision, DecisionOutcome.GUARDED if decision.guard else DecisionOutcome.SKIPPED)
        if self.settings.shadow:
            if (
                self.store.action_state(job.order_id, decision.action, organization=job.organization)
                == ActionState.DONE
            ):
                return self._finish(
                    job, decision.guarded("already_flagged", "the order was already flagged"), DecisionOutcome.GUARDED
                )
            return self._finish(job, decision, DecisionOutcome.SHADOW)
        return self._enforce(job, event, decision)

    def _handle(self, job: Job, handler: TopicHandler) -> Outcome:
        """A job about no order: its topic's handler does the work (no policy, no mode)."""
        try:
            handled = handler(job, self.clock())
        except InvalidPayload as exc:
            return self._dead(job, f"stored body no longer parses: {exc}", None)
        outcome = self._finish(job, handled.decision, handled.outcome)
        if outcome.state == JobResult.DONE:
            self._observe("handled", job, **handled.observe)
        return outcome

    def _enforce(self, job: Job, event: Event, decision: Decision) -> Outcome:
        assert self.client is not None
        order_id, action = job.order_id, decision.action
        claim = self.store.begin_action(
            order_id,
            action,
            worker=self.id,
            job_id=job.id,
            lease_seconds=self.settings.lease_seconds,
            now=self.clock(),
            organization=job.organization,
        )
        if claim.status == ClaimStatus.DONE:
            d = decision.guarded("already_flagged", "the order was already flagged for this action")
            return self._finish(job, d, DecisionOutcome.GUARDED, wallet_entry_id=claim.wallet_entry_id)
        if claim.status == ClaimStatus.BUSY:
            return self._defer(job, decision, "another worker is flagging this order")
        fresh = True
        if action == SAVE:
            card = claims.claim_card(
                self.store,
                event,
                self.policy.wallet_match,
                job_id=job.id,
                worker=self.id,
                lease_seconds=self.settings.lease_seconds,
                now=self.clock(),
                organization=job.organization,
            )
            if card is not None and card.status == ClaimStatus.BUSY:
                self.store.release_action(
                    order_id,
                    action,
                    worker=self.id,
                    uncertain=claim.uncertain,
                    now=self.clock(),
                    organization=job.organization,
                )
                return self._defer(job, decision, f"order {card.holder} is saving this customer's card")
            fresh = card is None or card.fresh
        try:
            if action == SAVE:
                return self._save(job, event, decision, uncertain=claim.uncertain, fresh=fresh)
            return self._use(job, event, decision, uncertain=claim.uncertain)
        except CommerceLayerError as exc:
            # An earlier attempt's uncertainty stands until an attempt ends the action: this
            # attempt's read may have settled it, but a failure after the read (a 429, a refusal)
            # says nothing of the earlier call, so the next attempt looks again before writing.
            uncertain = exc.uncertain or claim.uncertain
            hold = self.clock() + self.settings.lease_seconds if uncertain else None
            self.store.release_action(
                order_id,
                action,
                worker=self.id,
                uncertain=uncertain,
                now=self.clock(),
                hold_until=hold,
                organization=job.organization,
            )
            return self._failed(job, decision, exc)

    def _defer(self, job: Job, decision: Decision, why: str) -> Outcome:
        """Another worker holds what this job needs: try again shortly, without using an attempt."""
        self.store.retry_job(
            job.id,
            worker=self.id,
            error=why,
            next_attempt_at=self.clock() + BUSY_RETRY_SECONDS,
            now=self.clock(),
            count_attempt=False,
        )
        return Outcome(JobResult.RETRY, decision, error="busy")

    def _save(self, job: Job, event: Event, decision: Decision, *, uncertain: bool, fresh: bool = True) -> Outcome:
        """Save the payment source to the wallet, unless it is there already.

        The webhook body tells only if it carried the wallet with each entry's linkage (or the
        gateway tokens to compare), and no save of this card was claimed before (`fresh`: an
        earlier save may postdate the body); otherwise, and always after an attempt whose outcome
        is unknown, one read with the paths that carry the linkage decides before writing."""
        assert self.client is not None
        before = event
        look = wallet.look_up(event, self.policy.wallet_match)
        if uncertain or not look.known or not fresh:
            before = self._read_order(event)
            look = wallet.look_up(before, self.policy.wallet_match)
            if not look.known:
                log.warning(
                    "wallet entries came without payment_source linkage though it was included",
                    extra={"order_id": event.order_id},
                )
            if look.in_wallet and uncertain and not look.other_record:
                d = replace(
                    decision,
                    reason=f"{decision.reason}; an earlier attempt had already applied it",
                    guard=None,
                    wallet_entry_id=look.entry_id,
                )
                return self._finish(job, d, DecisionOutcome.APPLIED, wallet_entry_id=look.entry_id, action=SAVE)
            refused = save_guards(decision, before, look, how=", read before writing")
            if refused is not None:
                return self._guarded(job, refused, SAVE)
        self._heartbeat(job)
        doc = self.client.update_order(
            event.order_id, {"_save_payment_source_to_customer_wallet": True}, include=list(wallet.SAVE_INCLUDES)
        )
        entry_id = saved_entry_id(doc, before)
        if entry_id is None:
            return self._verify_save(job, event, decision, doc, before)
        return self._finish(
            job,
            replace(decision, wallet_entry_id=entry_id),
            DecisionOutcome.APPLIED,
            wallet_entry_id=entry_id,
            action=SAVE,
        )

    def _verify_save(self, job: Job, event: Event, decision: Decision, doc: dict[str, Any], before: Event) -> Outcome:
        """The save's answer showed no entry for this payment source: look once more, and if the
        wallet still has none, record `saved_without_entry` with what was seen. The action is
        marked done so that it is not retried blindly (README: what the operator should do)."""
        seen: Event | None = None
        failed = ""
        try:
            seen = self._read_order(event)
        except CommerceLayerError as exc:
            # The save was accepted: failing here must not release the action for another save.
            failed = f"failed: {exc}"
        if seen is not None:
            entry_id = saved_entry_id(doc, before, seen)
            if entry_id is not None:
                return self._finish(
                    job,
                    replace(decision, wallet_entry_id=entry_id),
                    DecisionOutcome.APPLIED,
                    wallet_entry_id=entry_id,
                    action=SAVE,
                )
        answer = Event.from_document(event.topic, doc)
        shown = ", ".join(e.id for e in answer.wallet or ()) if answer.wallet is not None else "no wallet"
        if seen is not None:
            read = ", ".join(e.id for e in seen.wallet or ()) if seen.wallet is not None else "no wallet"
        else:
            read = failed
        was = ", ".join(e.id for e in before.wallet or ()) if before.wallet is not None else "unknown"
        source = f"{event.payment_source_type} {event.payment_source.id}" if event.payment_source else "none"
        d = replace(
            decision,
            reason=(
                f"{decision.reason}; saved but no wallet entry appeared for payment source {source}: "
                f"wallet before [{was}], in the answer [{shown}], read after [{read}]"
            ),
        )
        return self._finish(job, d, SAVED_WITHOUT_ENTRY, action=SAVE)

    def _use(self, job: Job, event: Event, decision: Decision, *, uncertain: bool) -> Outcome:
        """Make a wallet entry the order's payment source (once)."""
        assert self.client is not None
        current = event
        if uncertain or event.wallet is None:
            current = self._read_order(event)
        entry_id = decision.wallet_entry_id
        if current is not event:
            paying = wallet.order_source_entry(current) if uncertain else None
            if paying is not None:
                # An earlier use may have been applied: the read settles it. Whichever entry that
                # call (this job's or another's) chose, the order now pays from the wallet: done,
                # never a second, different entry.
                d = replace(
                    decision,
                    reason=f"{decision.reason}; an earlier attempt had already applied wallet entry {paying.id}",
                    wallet_entry_id=paying.id,
                )
                return self._finish(job, d, DecisionOutcome.APPLIED, wallet_entry_id=paying.id, action=USE_WALLET)
            # The wallet as read now, less the entries whose card has expired at the order's time.
            split = expiry.split_expired(current.wallet or (), current)
            chosen = next((e for e in split.usable if e.id == entry_id), None) if entry_id else None
            chosen = chosen or choose_wallet_entry(split.usable, decision.strategy or "newest")
            if chosen is not None and wallet.entry_is_order_source(chosen, current):
                d = replace(
                    decision.guarded(
                        "already_using_wallet_entry", f"payment source already is wallet entry {chosen.id}"
                    ),
                    wallet_entry_id=chosen.id,
                )
                return self._guarded(job, d, USE_WALLET)
            entry_id = chosen.id if chosen else None
            if entry_id is None and split.expired:
                expired = ", ".join(e.id for e, _ in split.expired)
                none_left = decision.guarded(
                    "wallet_card_expired", f"every wallet entry's card has expired ({expired})"
                )
                return self._guarded(job, none_left, USE_WALLET)
        if entry_id is None:
            none_fits = decision.guarded("no_wallet_entry", "the customer's wallet has no entry that fits")
            return self._guarded(job, none_fits, USE_WALLET)
        self._heartbeat(job)
        self.client.update_order(event.order_id, {"_customer_payment_source_id": entry_id})
        return self._finish(
            job,
            replace(decision, wallet_entry_id=entry_id),
            DecisionOutcome.APPLIED,
            wallet_entry_id=entry_id,
            action=USE_WALLET,
        )

    def _read_order(self, event: Event) -> Event:
        """One read of the order with the wallet and each entry's payment_source linkage."""
        assert self.client is not None
        doc = self.client.get_order(event.order_id, include=list(wallet.READ_INCLUDES))
        return Event.from_document(event.topic, doc)

    def _guarded(self, job: Job, decision: Decision, action: str) -> Outcome:
        """A guard found after claiming the action: give the claim back unchanged, record why."""
        self.store.release_action(
            job.order_id, action, worker=self.id, uncertain=False, now=self.clock(), organization=job.organization
        )
        return self._finish(job, decision, DecisionOutcome.GUARDED)

    def _heartbeat(self, job: Job) -> None:
        """Extend the leases before a call to Commerce Layer, unless they were taken a moment ago
        (the common case: no read before the write), which saves a commit on the way to the PATCH."""
        if self.clock() - self._claimed_at < self.settings.lease_seconds / 4:
            return
        self.store.heartbeat(job.id, worker=self.id, lease_seconds=self.settings.lease_seconds, now=self.clock())

    # --- recording --------------------------------------------------------------------------
    def _record(
        self, decision: Decision, outcome: DecisionOutcome, wallet_entry_id: str | None = None
    ) -> DecisionRecord:
        return DecisionRecord(
            rule=decision.rule,
            action=decision.action,
            reason=decision.reason,
            outcome=outcome,
            mode=self.mode,
            guard=decision.guard,
            wallet_entry_id=wallet_entry_id or decision.wallet_entry_id,
        )

    def _finish(
        self,
        job: Job,
        decision: Decision,
        outcome: DecisionOutcome,
        *,
        wallet_entry_id: str | None = None,
        action: str | None = None,
    ) -> Outcome:
        """Record the decision and end the job; with `action`, mark the order's action done with it."""
        ok = self.store.finish_job(
            job.id,
            worker=self.id,
            decision=self._record(decision, outcome, wallet_entry_id),
            now=self.clock(),
            action=action,
        )
        if not ok:
            log.warning(
                "job lease was lost before it could be finished", extra={"job_id": job.id, "order_id": job.order_id}
            )
        self._observe("decision", job, decision=decision, outcome=outcome if ok else JobResult.LOST)
        return Outcome(JobResult.DONE if ok else JobResult.LOST, decision, outcome)

    def _failed(self, job: Job, decision: Decision, exc: CommerceLayerError) -> Outcome:
        error = storable_text(str(exc))
        if isinstance(exc, CredentialsRefused) and self.credentials is not None:
            # The deployment's fault, not the order's: back to pending, this attempt not counted.
            self.store.retry_job(
                job.id, worker=self.id, error=error, next_attempt_at=self.clock(), now=self.clock(), count_attempt=False
            )
            self.credentials.refused(exc)
            self._observe("held", job, decision=decision, error=error)
            return Outcome(JobResult.HELD, decision, error=error)
        if exc.retryable and job.attempts < self.settings.max_attempts:
            delay = retry_delay(
                job.attempts,
                base=self.settings.retry_base_seconds,
                cap=self.settings.retry_max_seconds,
                retry_after=exc.retry_after,
                rng=self.rng,
            )
            if exc.uncertain:
                # The change may still land after we gave up waiting: look no sooner than one read
                # timeout later, so the check before writing again sees it.
                delay = max(delay, self.settings.cl_read_timeout)
            self.store.retry_job(
                job.id, worker=self.id, error=error, next_attempt_at=self.clock() + delay, now=self.clock()
            )
            self._observe("retry", job, decision=decision, error=error, delay=round(delay, 3))
            return Outcome(JobResult.RETRY, decision, error=error)
        why = "attempts exhausted" if exc.retryable else "permanent error"
        return self._dead(job, f"{why}: {error}", decision)

    def _dead(self, job: Job, error: str, decision: Decision | None) -> Outcome:
        error = storable_text(error)
        record = self._record(decision, DecisionOutcome.FAILED) if decision is not None else None
        ok = self.store.dead_letter(job.id, worker=self.id, error=error, decision=record, now=self.clock())
        self._observe("dead_letter", job, decision=decision, error=error)
        return Outcome(JobResult.DEAD if ok else JobResult.LOST, decision, DecisionOutcome.FAILED, error)

    def _observe(self, what: str, job: Job, *, decision: Decision | None = None, **extra: Any) -> None:
        fields: dict[str, Any] = {
            "job_id": job.id,
            "order_id": job.order_id,
            "topic": job.topic,
            "attempt": job.attempts,
            "worker": self.id,
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


class BudgetExceeded(Exception):
    """The policy took longer than WEBHOOK_APP_DECIDE_BUDGET_SECONDS on one job."""


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Raise BudgetExceeded in the block after `seconds` (a SIGALRM timer: the main thread only,
    where the worker process runs its loop; elsewhere, e.g. in tests' threads, no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(_signum: int, _frame: object) -> None:
        raise BudgetExceeded(f"the policy took longer than {seconds:g} s to decide")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _describe(exc: BaseException) -> str:
    """`Type: message`, storable; the message of our own errors never holds a secret."""
    return storable_text(f"{type(exc).__name__}: {exc}", limit=1000)


def saved_entry_id(doc: dict[str, Any], before: Event, read: Event | None = None) -> str | None:
    """The wallet entry the save's answer shows for this order's payment source.

    The answer was asked for each entry's `payment_source` linkage, so the entry made from this
    source is found by linkage (or gateway token); failing that, the newest entry that was not in
    the wallet before (when the wallet before is known)."""
    answer = read or Event.from_document(before.topic, doc)
    look = wallet.look_up(
        replace(answer, payment_source=answer.payment_source or before.payment_source), (wallet.GATEWAY_TOKEN,)
    )
    if look.other_record:
        look = replace(look, entry_id=None)
    if look.in_wallet:
        return look.entry_id
    if before.wallet is None:
        return None
    chosen = wallet.newest_fresh_entry(answer.wallet or (), (e.id for e in before.wallet))
    return chosen.id if chosen else None
