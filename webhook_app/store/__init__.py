"""Durable storage: deliveries, jobs, decisions and per-order action claims.

One interface (`Store`, in ports.py: the union of narrow ports by use, `IntakeStore`,
`JobQueue`, `Claims`, `AuditReads`, `OperationsLog`, `Retention`, `Maintenance`) with two implementations chosen by
`WEBHOOK_APP_DATABASE_URL`: SQLite (`sqlite:///path`, the embedded default) and PostgreSQL
(`postgresql://...`, to scale out). Both pass the same contract tests (tests/test_store_contract.py).

The package offers that contract as ports.py names it in its `__all__` (the ports, and the records
of base.py they take and return), and `open_store`.
"""

from __future__ import annotations

from webhook_app.errors import ConfigError
from webhook_app.store import ports
from webhook_app.store.ports import *  # noqa: F403 - the names of ports.__all__, re-exported
from webhook_app.store.ports import Store


def open_store(url: str, *, timeout: float = 3.0) -> Store:
    """Open the store a database URL names (does not create or upgrade the schema).

    `timeout`: the longest a request waits for the database (SQLite's busy timeout, PostgreSQL's
    pool and connect timeouts) before StoreUnavailable; keep it under Commerce Layer's 5 s.
    """
    if url.startswith("sqlite:///"):
        from webhook_app.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"), busy_timeout_ms=int(timeout * 1000))
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from webhook_app.store.postgres import PostgresStore
        except ImportError as exc:  # installed without the extra (or a psycopg without libpq)
            raise ConfigError(
                "WEBHOOK_APP_DATABASE_URL",
                f"a postgresql:// URL needs the PostgreSQL driver ({exc}): install it with"
                " pip install 'webhook-app[postgres]', or use sqlite:///PATH",
            ) from None

        return PostgresStore(url, pool_timeout=timeout, connect_timeout=max(1, round(timeout)))
    raise ValueError("database URL must start with sqlite:/// or postgresql://")


__all__ = ports.__all__ + ["open_store"]
