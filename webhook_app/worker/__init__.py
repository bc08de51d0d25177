"""The worker: claim a job, decide by the policy, act on Commerce Layer, record the outcome.

Read it in this order: `loop.py` (the `Worker`: claim, attempt, prune, heartbeat), `attempt.py`
(one try's state and how it ends), `process.py` (decide, then shadow or enforce), `save.py` (save
the payment source to the wallet), `reuse.py` (make a wallet entry the order's payment source),
`claims.py` (the card claim around a save).
"""

from webhook_app.worker.attempt import BUSY_RETRY_SECONDS, Attempt, Outcome, Tenant, note_call, noting_trace_ids
from webhook_app.worker.loop import HEARTBEAT, HEARTBEAT_SECONDS, PRUNE_BATCHES_PER_TICK, Worker, new_worker_id
from webhook_app.worker.process import BudgetExceeded, Handled, TopicHandler, time_budget
from webhook_app.worker.save import SAVED_WITHOUT_ENTRY, saved_entry_id

__all__ = [
    "BUSY_RETRY_SECONDS",
    "HEARTBEAT",
    "HEARTBEAT_SECONDS",
    "PRUNE_BATCHES_PER_TICK",
    "SAVED_WITHOUT_ENTRY",
    "Attempt",
    "BudgetExceeded",
    "Handled",
    "Outcome",
    "Tenant",
    "TopicHandler",
    "Worker",
    "new_worker_id",
    "note_call",
    "noting_trace_ids",
    "saved_entry_id",
    "time_budget",
]
