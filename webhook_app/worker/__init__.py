"""The worker: claim a job, decide by the policy, act on Commerce Layer, record the outcome.

`loop.py` is the loop; `claims.py` the card claim around a save.
"""

from webhook_app.worker.loop import (
    BUSY_RETRY_SECONDS,
    HEARTBEAT,
    HEARTBEAT_SECONDS,
    PRUNE_BATCHES_PER_TICK,
    SAVED_WITHOUT_ENTRY,
    BudgetExceeded,
    Handled,
    Outcome,
    Tenant,
    TopicHandler,
    Worker,
    new_worker_id,
    saved_entry_id,
    time_budget,
)

__all__ = [
    "BUSY_RETRY_SECONDS",
    "HEARTBEAT",
    "HEARTBEAT_SECONDS",
    "PRUNE_BATCHES_PER_TICK",
    "SAVED_WITHOUT_ENTRY",
    "BudgetExceeded",
    "Handled",
    "Outcome",
    "Tenant",
    "TopicHandler",
    "Worker",
    "new_worker_id",
    "saved_entry_id",
    "time_budget",
]
