"""What one attempt does with its job: a topic handler's job, or an order's decision and action.

`run` is one attempt in a span continuing the intake's trace, with the trace ids recorded on the
attempt's row. An order's job is decided by the policy (within the decide budget); shadow mode
records the decision, enforce mode claims the order's action and hands over to save.py or
reuse.py. A failed call releases the action claim,
uncertain when its outcome is unknown, so that the next attempt reads the order before writing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook_app import tracing
from webhook_app.errors import CommerceLayerError, InvalidPayload, StoreError
from webhook_app.events import Event
from webhook_app.policy import SAVE, SKIP, Decision
from webhook_app.states import ActionState, ClaimStatus, DecisionOutcome, JobResult
from webhook_app.store import ActionClaim, CardClaim, Job
from webhook_app.worker import claims
from webhook_app.worker.attempt import Attempt, Outcome
from webhook_app.worker.reuse import use_wallet_entry
from webhook_app.worker.save import save

log = logging.getLogger("webhook_app.worker")

ANONYMIZATION = "anonymization"  # the operations log's kind (ops/anonymization.py's KIND)


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


def run(attempt: Attempt, handler: TopicHandler | None) -> Outcome:
    """One attempt, in a span continuing the intake's trace; the trace ids noted on the attempt."""
    job = attempt.job
    attrs = {"webhook_app.job_id": job.id, "webhook_app.order_id": job.order_id, "webhook_app.attempt": job.number}
    with (
        attempt.in_progress(),
        tracing.span("job attempt", kind="consumer", parent=job.trace_context, attributes=attrs) as span,
    ):
        outcome = work(attempt, handler)
        span.set("webhook_app.outcome", outcome.outcome or outcome.state)
    if span.trace_id or attempt.cl_trace_ids:
        try:
            attempt.store.record_attempt_traces(
                job.id, job.number, trace_id=span.trace_id, cl_trace_ids=attempt.cl_trace_ids
            )
        except StoreError as exc:
            log.warning("trace ids not recorded", extra={"job_id": job.id, "error": str(exc)})
    return outcome


#: The decision of a job whose stored body was erased (`forget`, an honoured anonymization)
#: before it ran: nothing is left to decide on, and the customer asked for it, so the job ends
#: skipped rather than dead-lettered as a corrupt row (which alerted and read "no longer parses").
#: The intake never stores an empty body: an empty one is an erased one.
ERASED = Decision(
    action=SKIP,
    rule="erased",
    reason="the stored body was erased (forget or anonymization) before the job ran: nothing to decide on",
)


def work(attempt: Attempt, handler: TopicHandler | None) -> Outcome:
    """The job's work: its topic's handler's, or the policy's decision on the order, acted on."""
    job, settings = attempt.job, attempt.settings
    if not job.body:
        return attempt.finish(ERASED, DecisionOutcome.SKIPPED)
    if handler is not None:
        return _handle(attempt, handler)
    if not job.order_id:  # a job about no order, and this worker has no handler for its topic
        return attempt.dead(f"no handler for topic {job.topic} in this worker", None)
    try:
        event = Event.from_body(job.topic, job.body, max_depth=settings.max_json_depth)
    except InvalidPayload as exc:  # intake checked it; a corrupt row is not worth retrying
        return attempt.dead(f"stored body no longer parses: {exc}", None)
    late = _customer_anonymized(attempt, event)
    if late is not None:
        return late
    with time_budget(settings.decide_budget):
        decision = attempt.tenant.policy.decide(event)
    if not decision.calls_commerce_layer:
        return attempt.finish(decision, DecisionOutcome.GUARDED if decision.guard else DecisionOutcome.SKIPPED)
    if settings.shadow:
        if attempt.store.action_state(job.order_id, decision.action, organization=job.organization) == ActionState.DONE:
            flagged = decision.guarded("already_flagged", "the order was already flagged")
            return attempt.finish(flagged, DecisionOutcome.GUARDED)
        return attempt.finish(decision, DecisionOutcome.SHADOW)
    return enforce(attempt, event, decision)


def _customer_anonymized(attempt: Attempt, event: Event) -> Outcome | None:
    """An order delivery that arrives after its customer's anonymization completed (Commerce
    Layer retrying an event made before it sends the payload made then, name and e-mail
    included): its body is erased at once, as the anonymization erased the others, and the job
    ends skipped (nothing is done for a customer who asked to be anonymized). None otherwise."""
    customer_id = event.customer_id
    if not customer_id:
        return None
    job = attempt.job
    ops = attempt.store.list_operations(kind=ANONYMIZATION, subject=customer_id, limit=1000)
    done = next((op for op in ops if op.detail.get("event") == "completed"), None)
    if done is None:
        return None
    attempt.store.remove_bodies([job.delivery_id], why="forgotten", now=attempt.clock())
    decision = Decision(
        action=SKIP,
        rule="erased",
        reason=f"customer {customer_id} was anonymized (operation {done.id}): this later delivery's body was erased",
    )
    return attempt.finish(decision, DecisionOutcome.SKIPPED)


def _handle(attempt: Attempt, handler: TopicHandler) -> Outcome:
    """A job about no order: its topic's handler does the work (no policy, no mode)."""
    try:
        handled = handler(attempt.job, attempt.clock())
    except InvalidPayload as exc:
        return attempt.dead(f"stored body no longer parses: {exc}", None)
    outcome = attempt.finish(handled.decision, handled.outcome)
    if outcome.state == JobResult.DONE:
        attempt.observe("handled", **handled.observe)
    return outcome


def enforce(attempt: Attempt, event: Event, decision: Decision) -> Outcome:
    """Claim the order's action (for a save, with the customer's card, in one transaction:
    claims.py), then save or reuse; a failed call releases the claim."""
    action = decision.action
    claim, card = _claim(attempt, event, action)
    if claim.status == ClaimStatus.DONE:
        d = decision.guarded("already_flagged", "the order was already flagged for this action")
        return attempt.finish(d, DecisionOutcome.GUARDED, wallet_entry_id=claim.wallet_entry_id)
    if claim.status == ClaimStatus.BUSY:
        return attempt.defer(decision, "another worker is flagging this order")
    if card is not None and card.status == ClaimStatus.BUSY:  # the action was given back with it
        return attempt.defer(decision, f"order {card.holder} is saving this customer's card")
    attempt.action, attempt.holds_card = action, card is not None  # checked before each write
    try:
        if action == SAVE:
            return save(attempt, event, decision, uncertain=claim.uncertain, fresh=card is None or card.fresh)
        return use_wallet_entry(attempt, event, decision, uncertain=claim.uncertain)
    except CommerceLayerError as exc:
        # An earlier attempt's uncertainty stands until an attempt ends the action: this
        # attempt's read may have settled it, but a failure after the read (a 429, a refusal)
        # says nothing of the earlier call, so the next attempt looks again before writing.
        uncertain = exc.uncertain or claim.uncertain
        hold = attempt.clock() + attempt.settings.lease_seconds if uncertain else None
        attempt.release(action, uncertain=uncertain, hold_until=hold)
        return attempt.failed(decision, exc)


def _claim(attempt: Attempt, event: Event, action: str) -> tuple[ActionClaim, CardClaim | None]:
    """The order's action; for a save, and once the action is acquired, its card too, in the same
    transaction (a busy card gives the action back in it)."""
    if action == SAVE:
        return claims.begin_save(attempt.store, event, attempt.tenant.policy.wallet_match, attempt.holder())
    claim = attempt.store.begin_action(attempt.holder(), action)
    return claim, None


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
