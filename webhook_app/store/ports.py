"""The storage contract, as narrow ports by use; `Store` is their union, what a backend implements.

Times are seconds since the epoch as floats, always passed in by the caller (`now=`; a claim's in
its `ClaimHolder`) so tests control the clock. Every method that changes state is one transaction: it either happens
entirely or raises StoreError (StoreUnavailable when the database cannot be reached or written).

Exactly-once rests on these constraints:
- a delivery's `identity` (hash of topic and raw body) is unique, so a redelivery creates no job;
- a job is worked on only by the worker holding its unexpired lease; a worker whose lease was
  taken over cannot finish or fail the job any more;
- an `(order_id, action)` claim allows one Commerce Layer call in flight per order and action and
  remembers when it is done, whichever delivery or topic asked for it;
- a `(organization, customer, card)` claim lets one order at a time save a card into a customer's
  wallet, from the decision to save until the save is verified or known to have failed.

A consumer may ask for the narrowest port it uses (the intake an `IntakeStore`, retention a
`Retention`); the records they take and return are in `base.py`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from webhook_app.config import RateLimit
from webhook_app.events import Delivery
from webhook_app.ratelimit import LocalRateLimiter, RateLimiter
from webhook_app.states import ActionState, JobState
from webhook_app.store.base import (
    SCHEMA_VERSION,
    ActionClaim,
    ActivityRow,
    CardClaim,
    ClaimHolder,
    DecisionRecord,
    DeliveryFilter,
    Job,
    Operation,
    Pruned,
    QueueStats,
    Recorded,
    Status,
    StorageStats,
    StoredDelivery,
    Submission,
)


class IntakeStore(abc.ABC):
    """What the intake needs: store a verified delivery once (and its job), durably."""

    def record_delivery(
        self,
        delivery: Delivery,
        *,
        now: float,
        replay_of: int | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> Recorded:
        """Store a verified delivery once; queue a job for an order event. Durable on return."""
        return self.record_deliveries([Submission(delivery, now, replay_of, trace_context)])[0]

    @abc.abstractmethod
    def record_deliveries(self, batch: Sequence[Submission]) -> list[Recorded]:
        """Store several deliveries in one transaction and one flush to disk (group commit): all
        of them, or none (StoreError). The results are in the order of `batch`; a delivery equal
        to an earlier one, stored or in the same batch, is a duplicate. Durable on return."""

    @abc.abstractmethod
    def delivery_id_for_identity(self, identity: str) -> int | None:
        """The id of the delivery with this identity, if stored."""


class JobQueue(abc.ABC):
    """What the worker's loop needs: lease a due job, keep the lease, and end the attempt."""

    @abc.abstractmethod
    def claim_job(
        self, *, worker: str, lease_seconds: float, now: float, organizations: Sequence[str] | None = None
    ) -> Job | None:
        """Lease the next due job (pending, or running with an expired lease). With `organizations`
        (agency mode), only theirs, taking turns: the organization whose turn is oldest among those
        with a due job goes first, so one organization's backlog never holds up another's jobs."""

    @abc.abstractmethod
    def heartbeat(
        self,
        job_id: int,
        *,
        worker: str,
        lease_seconds: float,
        now: float,
        action: str | None = None,
        card: bool = False,
    ) -> bool:
        """Extend a lease still held by `worker` (and the action claims the job holds). With
        `action` (and `card`), True only if the job also still holds the order's claim of that
        action (and its card claim): a worker frozen past its lease may find them taken over by
        another job of the order (or another order of the card) while its own job's lease was not."""

    @abc.abstractmethod
    def finish_job(
        self, job_id: int, *, worker: str, decision: DecisionRecord, now: float, action: str | None = None
    ) -> bool:
        """Mark done with its decision, if `worker` still holds the lease.

        With `action`, the order's claim on that action (held by `worker`) is marked done in the
        same transaction: a worker dying between the two would otherwise leave an order flagged
        at Commerce Layer whose job runs again and finds only "already flagged"."""

    @abc.abstractmethod
    def retry_job(
        self, job_id: int, *, worker: str, error: str, next_attempt_at: float, now: float, count_attempt: bool = True
    ) -> bool:
        """Give the job back for another attempt at `next_attempt_at`.

        `count_attempt=False` when the attempt never started its work (another worker was busy
        with the same order), so waiting does not use up the job's attempts."""

    @abc.abstractmethod
    def dead_letter(self, job_id: int, *, worker: str, error: str, decision: DecisionRecord | None, now: float) -> bool:
        """Stop trying; keep the reason."""

    @abc.abstractmethod
    def requeue(self, job_id: int, *, now: float) -> bool:
        """Put a dead-lettered job back in the queue with its attempt budget reset (the attempts
        made so far stay, and the next one is numbered after them)."""

    @abc.abstractmethod
    def job_state(self, job_id: int) -> JobState | None:
        """`pending`, `running`, `done` or `dead`; None if there is no such job."""

    @abc.abstractmethod
    def record_attempt_traces(
        self, job_id: int, attempt: int, *, trace_id: str | None, cl_trace_ids: Sequence[str]
    ) -> None:
        """Note on attempt number `attempt` (`Job.number`) of the job its span's trace id and
        Commerce Layer's trace ids."""

    def wait_for_jobs(self, timeout: float) -> bool:
        """Block until a new job may be due (an intake committed one) or `timeout` passes;
        True if woken. Polling is the fallback: a backend without a wake-up just sleeps."""
        time.sleep(timeout)
        return False


class Claims(abc.ABC):
    """Exactly-once around Commerce Layer: per-order action claims, per-customer card claims,
    and named leases (one circuit watcher, one reconciler)."""

    @abc.abstractmethod
    def begin_action(self, holder: ClaimHolder, action: str) -> ActionClaim:
        """Claim `action` on the holder's order for its job until `holder.until`."""

    @abc.abstractmethod
    def release_action(
        self, holder: ClaimHolder, action: str, *, uncertain: bool, hold_until: float | None = None
    ) -> None:
        """Give the claim back (`open`), remembering whether the call may have been applied.

        For the save action, the card claims the order holds go with it: released when the outcome
        is known, kept for this order until `hold_until` (default: their lease) when `uncertain`."""

    @abc.abstractmethod
    def action_state(self, order_id: str, action: str, *, organization: str = "") -> ActionState | None:
        """`open`, `in_flight`, `done`, or None if never claimed."""

    @abc.abstractmethod
    def claim_card(self, holder: ClaimHolder, customer_id: str, card_key: str) -> CardClaim:
        """Claim the save of one card (`card_key`; "" when the card cannot be identified, which
        stands for every card of the customer) for the holder's order. Busy while another order
        holds a live claim on this card or on the customer's unidentified card (for "": on any
        card). The claim's lease is the job's (`heartbeat` extends it); it ends with the order's
        save action (`finish_job` with the action, `release_action`)."""

    @abc.abstractmethod
    def begin_save(self, holder: ClaimHolder, customer: tuple[str, str] | None) -> tuple[ActionClaim, CardClaim | None]:
        """`begin_action` for the save action and, once acquired, `claim_card` of `customer`
        (customer id, card key; None when the order has no customer: no card claim), in one
        transaction: when the card is busy the action is given back in it (`release_action` with
        the claim's own uncertainty). The card claim is None unless the action was acquired."""

    @abc.abstractmethod
    def take_lease(self, name: str, *, owner: str, seconds: float, now: float) -> bool:
        """Take (or extend, for its owner) the lease `name` until `now + seconds`; False while
        another owner's is unexpired."""

    @abc.abstractmethod
    def release_lease(self, name: str, *, owner: str) -> None:
        """End the lease `name` if `owner` holds it."""


class AuditReads(abc.ABC):
    """What the admin page, the API and the metrics read: deliveries with their job, decisions
    and attempts, and counts."""

    @abc.abstractmethod
    def get_delivery(self, delivery_id: int) -> StoredDelivery | None: ...

    @abc.abstractmethod
    def list_deliveries(self, flt: DeliveryFilter) -> list[StoredDelivery]: ...

    def iter_deliveries(self, flt: DeliveryFilter, *, page_size: int = 500) -> Iterator[StoredDelivery]:
        """Every delivery matching `flt` (at most `flt.limit`), newest first, a page at a time."""
        before, left = flt.before_id, flt.limit
        while left > 0:
            page = self.list_deliveries(replace(flt, limit=min(page_size, left), before_id=before))
            yield from page
            left -= len(page)
            if len(page) < min(page_size, left + len(page)):
                return
            before = page[-1].id

    @abc.abstractmethod
    def queue_stats(self, *, now: float) -> QueueStats: ...

    @abc.abstractmethod
    def decision_counts(self) -> list[tuple[str, str, str, int]]:
        """(rule, action, outcome, count) over all decisions."""

    @abc.abstractmethod
    def wallet_activity(self, *, since: float) -> list[ActivityRow]:
        """Decisions since `since` that saved, used or refused a wallet action (an action to save
        or use, or a guard), counted per day, market, rule, action, outcome and guard."""

    @abc.abstractmethod
    def orders_with_jobs(self, order_ids: list[str], *, organization: str | None = None) -> set[str]:
        """The subset of `order_ids` that have a job here (from any delivery, in any state;
        `organization`: that organization's jobs only)."""


class OperationsLog(abc.ABC):
    """The operations log (a deleted wallet entry, a circuit reset, ...) and what each process
    last said about itself (`service_status`)."""

    @abc.abstractmethod
    def record_operation(
        self, kind: str, *, subject: str | None, detail: Mapping[str, Any], now: float, organization: str = ""
    ) -> int:
        """Append to the operations log (a deleted wallet entry, a circuit reset, ...); its id."""

    @abc.abstractmethod
    def list_operations(
        self, *, kind: str | None = None, limit: int = 100, before_id: int | None = None, subject: str | None = None
    ) -> list[Operation]:
        """The newest entries first, optionally of one kind, about one subject, older than `before_id`."""

    @abc.abstractmethod
    def operations_since(self, kinds: Sequence[str], *, since: float, limit: int = 100_000) -> list[Operation]:
        """Operations of these kinds logged since `since`, oldest first (at most `limit`)."""

    @abc.abstractmethod
    def set_status(self, name: str, state: str, *, reason: str | None, source: str | None, now: float) -> Status:
        """Write what `name` is now; its `since` stays unless the state changes."""

    @abc.abstractmethod
    def get_status(self, name: str) -> Status | None:
        """What was last written for `name`; None if nothing was."""


class Retention(abc.ABC):
    """Retention and erasure: prune settled deliveries, redact or remove bodies, give space back."""

    @abc.abstractmethod
    def prune(
        self, *, bodies_before: float, records_before: float, limit: int, now: float, dry_run: bool = False
    ) -> Pruned:
        """One batch of at most `limit` of each: remove the body and headers of deliveries received
        before `bodies_before`, and whole deliveries (job, attempts, decisions) received before
        `records_before`, in both cases only once their job is done or dead (or they have none).
        The job's state is checked by the statements that remove, so a job requeued while the
        batch runs is never removed. Per-order action claims and card claims are never pruned:
        an order flagged stays flagged."""

    @abc.abstractmethod
    def bodies_to_redact(self, *, before: float, limit: int) -> list[tuple[int, bytes]]:
        """(id, body) of settled deliveries received before `before`, body kept, not yet redacted."""

    @abc.abstractmethod
    def replace_bodies(self, items: Sequence[tuple[int, bytes]], *, now: float) -> int:
        """Store redacted bodies (marked redacted); how many."""

    def reclaim(self) -> None:  # noqa: B027 - optional: a backend without anything to do keeps this
        """After pruning: make the freed space usable (and, where the backend can, give it back)."""

    @abc.abstractmethod
    def storage_stats(self) -> StorageStats:
        """The database's size, the oldest stored delivery, how many bodies are kept."""

    @abc.abstractmethod
    def bodies_after(self, after_id: int, *, limit: int, organization: str | None = None) -> list[tuple[int, bytes]]:
        """(id, body) of deliveries still carrying a body, id > `after_id`, by id (`organization`:
        only that organization's)."""

    @abc.abstractmethod
    def remove_bodies(self, ids: Sequence[int], *, why: str, now: float) -> int:
        """Remove the body and headers of these deliveries (metadata kept); how many."""


class Maintenance(abc.ABC):
    """The database itself: its schema, health and size, the shared rate limiter, closing."""

    @abc.abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema; return the version now in place."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The version in the database (0 when empty)."""

    def check_schema(self) -> None:
        """Raise SchemaOutOfDate unless the database is at SCHEMA_VERSION."""
        from webhook_app.errors import SchemaOutOfDate

        found = self.schema_version()
        if found != SCHEMA_VERSION:
            raise SchemaOutOfDate(
                f"database schema is at version {found}, this code needs {SCHEMA_VERSION}; run `webhook-app db upgrade`"
            )

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""

    def check_writable(self) -> None:
        """Raise StoreUnavailable unless the database can take a write now (for `/readyz`)."""
        self.ping()

    @abc.abstractmethod
    def database_bytes(self) -> int:
        """The database's size on disk in bytes (for the size gauge and its alert)."""

    def rate_limiter(self, limits: Sequence[RateLimit], *, clock: Callable[[], float] = time.time) -> RateLimiter:
        """The limiter for calls to Commerce Layer: per process here; shared where the backend can."""
        return LocalRateLimiter(limits, clock=clock)

    @abc.abstractmethod
    def close(self) -> None: ...


class Store(IntakeStore, JobQueue, Claims, AuditReads, OperationsLog, Retention, Maintenance):
    """Storage for deliveries, jobs, decisions and claims: every port, as one backend gives them."""

    def record_replay(self, delivery_id: int, *, nonce: str, now: float) -> Recorded | None:
        """Store a replay of a stored delivery (a new delivery marked `replay_of`), queued anew."""
        original = self.get_delivery(delivery_id)
        if original is None or original.body_removed is not None:  # nothing left to replay
            return None
        d = Delivery.from_row(vars(original))
        return self.record_delivery(d.as_replay(nonce), now=now, replay_of=original.replay_of or original.id)


#: the package `webhook_app.store` offers this contract: the ports, and the records (base.py) they
#: take and return
__all__ = [
    "SCHEMA_VERSION",
    "ActionClaim",
    "ActivityRow",
    "AuditReads",
    "CardClaim",
    "ClaimHolder",
    "Claims",
    "DecisionRecord",
    "DeliveryFilter",
    "IntakeStore",
    "Job",
    "JobQueue",
    "Maintenance",
    "Operation",
    "OperationsLog",
    "Pruned",
    "QueueStats",
    "Recorded",
    "Retention",
    "Status",
    "StorageStats",
    "Store",
    "StoredDelivery",
    "Submission",
]
