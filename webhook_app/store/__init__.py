"""Durable storage: deliveries, jobs, decisions and per-order action claims.

One interface (`Store`, in base.py) with two implementations chosen by
`WEBHOOK_APP_DATABASE_URL`: SQLite (`sqlite:///path`, the embedded default) and PostgreSQL
(`postgresql://...`, to scale out). Both pass the same contract tests (tests/test_store_contract.py).
"""

from __future__ import annotations

from webhook_app.store.base import (
    ActionClaim,
    DecisionRecord,
    DeliveryFilter,
    Job,
    QueueStats,
    Recorded,
    Store,
    StoredDelivery,
)


def open_store(url: str, **options: object) -> Store:
    """Open the store a database URL names (does not create or upgrade the schema)."""
    if url.startswith("sqlite:///"):
        from webhook_app.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"), **options)  # type: ignore[arg-type]
    if url.startswith(("postgresql://", "postgres://")):
        from webhook_app.store.postgres import PostgresStore  # type: ignore[import-not-found]

        return PostgresStore(url, **options)  # type: ignore[no-any-return]
    raise ValueError("database URL must start with sqlite:/// or postgresql://")


__all__ = [
    "ActionClaim",
    "DecisionRecord",
    "DeliveryFilter",
    "Job",
    "QueueStats",
    "Recorded",
    "Store",
    "StoredDelivery",
    "open_store",
]
