"""The states and outcomes the store keeps and the worker reports, as enums mypy checks.

Each is a `StrEnum`: a member is the very string stored in the database (and read by tests, the
admin API and the metrics), so `JobState.DONE == "done"`, and one written where a plain string
was goes to SQLite and PostgreSQL unchanged. The schema's CHECK constraints
(`store/schema/<dialect>/`) name the same values.
"""

from __future__ import annotations

from enum import StrEnum


class DeliveryStatus(StrEnum):
    """A stored delivery: queued for the worker (an order event, an anonymization) or not."""

    QUEUED = "queued"
    IGNORED = "ignored"


class JobState(StrEnum):
    """A job (`jobs.state`)."""

    PENDING = "pending"  # due at its next_attempt_at
    RUNNING = "running"  # leased by a worker until lease_expires_at
    DONE = "done"  # finished with its decision
    DEAD = "dead"  # dead-lettered: no more attempts until requeued


class ActionState(StrEnum):
    """An order's claim on one action (`order_actions.state`, `Store.action_state`)."""

    OPEN = "open"  # nobody holds it (possibly after an uncertain attempt)
    IN_FLIGHT = "in_flight"  # one worker may be calling Commerce Layer for it now
    DONE = "done"  # performed: never again for this order


class CardState(StrEnum):
    """A customer's card claim (`card_claims.state`)."""

    OPEN = "open"
    HELD = "held"  # an order holds the save of this card until its lease (or hold) runs out


class ClaimStatus(StrEnum):
    """The answer to asking for an action claim (`ActionClaim`) or a card claim (`CardClaim`)."""

    ACQUIRED = "acquired"  # go ahead
    BUSY = "busy"  # another worker or order holds it: try later
    DONE = "done"  # the action was already performed (action claims only)


class DecisionOutcome(StrEnum):
    """What a decision came to (`decisions.outcome`; also the `outcome` label of the metrics)."""

    APPLIED = "applied"  # the call to Commerce Layer was made and verified
    SHADOW = "shadow"  # shadow mode: decided, not applied
    SKIPPED = "skipped"  # the policy said skip
    GUARDED = "guarded"  # a guard turned the decision into a skip
    FAILED = "failed"  # dead-lettered
    SAVED_WITHOUT_ENTRY = "saved_without_entry"  # Commerce Layer accepted the save, no entry appeared
    # anonymization deliveries (ops/anonymization.py)
    ERASED = "erased"
    ALREADY_ERASED = "already_erased"
    RECORDED = "recorded"
    DISABLED = "disabled"


class AttemptEnd(StrEnum):
    """How an attempt ended other than with a decision (`attempts.outcome`; a finished attempt
    carries its decision's `DecisionOutcome`)."""

    RETRY = "retry"  # failed; the job is due again later
    DEFERRED = "deferred"  # never started its work (another worker was busy with the order)
    DEAD = "dead"  # failed for the last time: dead-lettered
    LEASE_EXPIRED = "lease_expired"  # its worker died or stalled; another worker took the job


class JobResult(StrEnum):
    """What processing one job ended with, for the worker's caller (`worker.Outcome.state`)."""

    DONE = "done"
    RETRY = "retry"
    DEAD = "dead"
    LOST = "lost"  # the lease was taken over before the end could be recorded
    HELD = "held"  # the credentials were refused: given back without using an attempt
