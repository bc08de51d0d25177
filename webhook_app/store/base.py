"""The records the store takes and gives back (a stored delivery, a job, a claim's answer, ...).

The contract itself, the ports by use and their union `Store`, is in `ports.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from webhook_app.events import Delivery
from webhook_app.states import ClaimStatus, DecisionOutcome
from webhook_app.store import schema

SCHEMA_VERSION = schema.version()  # the number of files in store/schema/<dialect>/


@dataclass(frozen=True)
class Recorded:
    """The outcome of storing a delivery."""

    delivery_id: int
    duplicate: bool
    job_id: int | None
    # a DeliveryStatus value: queued | ignored (a str: the intake's hot path and the group commit
    # writer's wire format build it from strings)
    status: str


@dataclass(frozen=True)
class Submission:
    """One delivery handed to `record_deliveries` (a batch is committed as one transaction)."""

    delivery: Delivery
    now: float
    replay_of: int | None = None
    trace_context: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Job:
    id: int
    delivery_id: int
    order_id: str
    topic: str
    attempts: int
    body: bytes = field(repr=False)
    received_at: float
    lease_expires_at: float
    replay: bool = False
    # The W3C trace context the intake stored beside the job ({} when traces were off).
    trace_context: dict[str, str] = field(default_factory=dict)
    # This attempt's number among all of the job's attempts: unlike `attempts` (the budget, which
    # a requeue starts afresh and a deferral gives back), it goes on counting (the attempts' rows).
    number: int = 0
    organization: str = ""  # agency mode: whose job it is ("" for the single organization)


@dataclass(frozen=True)
class DecisionRecord:
    rule: str
    action: str
    reason: str
    # applied | shadow | skipped | guarded | failed | saved_without_entry, or an anonymization's
    # erased | already_erased | recorded | disabled (states.DecisionOutcome)
    outcome: DecisionOutcome
    mode: str  # enforce | shadow
    guard: str | None = None
    wallet_entry_id: str | None = None


@dataclass(frozen=True)
class ActivityRow:
    """Decisions about the wallet on one UTC day (days since the epoch) and market, counted."""

    day: int
    market_id: str | None
    rule: str
    action: str
    outcome: str
    guard: str | None
    count: int


@dataclass(frozen=True)
class ClaimHolder:
    """Who takes an order's claims (`Claims`), and for how long: the order's job `job_id`, run by
    `worker`, in `organization`, at `now`, for `lease_seconds` (the claim lasts `until`).

    Giving a claim back (`Claims.release_action`) reads only who holds it and `now`."""

    order_id: str
    _: KW_ONLY  # the rest by name: two floats side by side are easy to swap
    worker: str
    job_id: int
    now: float
    lease_seconds: float
    organization: str = ""

    @property
    def until(self) -> float:
        """When the claim's lease runs out."""
        return self.now + self.lease_seconds


@dataclass(frozen=True)
class ActionClaim:
    """Result of asking to perform `action` on an order.

    status: `acquired` (go ahead), `done` (already performed: do nothing) or `busy` (another
    worker holds it right now: try later) (`ClaimStatus`). `uncertain` is true when an earlier attempt may have
    reached Commerce Layer without us learning the outcome; look before writing again.
    """

    status: ClaimStatus
    uncertain: bool = False
    wallet_entry_id: str | None = None


@dataclass(frozen=True)
class CardClaim:
    """Result of asking to save a card into a customer's wallet (`Store.claim_card`).

    status: `acquired` (this order may save it now) or `busy` (another order's save of this card,
    or of an unidentified card of the customer, is in hand or its outcome unknown: try later).
    `fresh` is true when no save of this card was ever claimed before: the wallet the webhook body
    shows can be trusted; otherwise read the wallet before writing (an earlier save may have
    added the entry since the body was made). `holder` is the order holding it when busy;
    `wallet_entry_id` the entry the last verified save of this card made, if any.
    """

    status: ClaimStatus
    fresh: bool = False
    holder: str | None = None
    wallet_entry_id: str | None = None


@dataclass(frozen=True)
class QueueStats:
    pending: int
    running: int
    done: int
    dead: int
    oldest_pending_age: float  # seconds, 0 when nothing is pending


@dataclass(frozen=True)
class DeliveryFilter:
    topic: str | None = None
    order_id: str | None = None
    status: str | None = None  # queued | ignored | pending | running | done | dead
    since: float | None = None
    until: float | None = None
    decision: str | None = None  # an action or an outcome of the latest decision
    limit: int = 100
    before_id: int | None = None
    with_body: bool = False  # lists leave bodies out (a page of 1 MiB bodies is 1 MiB a row)
    organization: str | None = None  # agency mode: one organization's ("" the implicit one's)


@dataclass(frozen=True)
class Operation:
    """One entry of the operations log: what was done (`kind`), to what (`subject`), and details."""

    id: int
    at: float
    kind: str
    subject: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class StoredDelivery:
    id: int
    identity: str
    topic: str
    resource_type: str
    resource_id: str
    order_id: str | None
    received_at: float
    secret_label: str
    headers: dict[str, str]
    body: bytes = field(repr=False)
    status: str
    replay_of: int | None
    job: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    body_removed: str | None = None  # why the body and headers are gone: retention | forgotten
    organization: str = ""


@dataclass(frozen=True)
class Pruned:
    """What one prune batch removed (or, dry, would remove)."""

    bodies: int  # deliveries whose body and headers were removed, metadata kept
    deliveries: int  # deliveries removed with their job, attempts and decisions


@dataclass(frozen=True)
class Status:
    """What one process found, written for the others to read (`service_status`): e.g. the
    worker's `commercelayer_credentials`, `ok` or `refused`, read by the web side's `/readyz`."""

    name: str
    state: str
    since: float  # when it came to this state
    reason: str | None
    source: str | None  # who wrote it (a worker id)
    updated_at: float  # when it was last written


@dataclass(frozen=True)
class StorageStats:
    bytes: int  # the database's size on disk
    oldest_received_at: float | None  # the oldest stored delivery
    bodies_kept: int  # deliveries still carrying a body
