"""The storage contract written once in SQL shared by SQLite and PostgreSQL, one mixin per port.

Backends supply a connection inside a transaction (`_tx`), their `dialect` (`dialect.py`: the few
statements spelled differently) and their DDL; everything else (the queries that give
exactly-once) is here, so both backends behave the same and the contract tests exercise one
piece of logic twice. `intake.py`, `queue.py`, `claims.py`, `audit.py`, `operations.py` and
`retention.py` each implement one port of `store/ports.py`.
"""

from __future__ import annotations

from webhook_app.store.ports import Store
from webhook_app.store.sql.audit import SQLAuditReads
from webhook_app.store.sql.claims import SQLClaims
from webhook_app.store.sql.cursor import Cursorish, Row, SQLBase, schema_version_in
from webhook_app.store.sql.intake import INSERT_DELIVERY, SQLIntake, delivery_values, job_order_id
from webhook_app.store.sql.operations import SQLOperationsLog
from webhook_app.store.sql.queue import SQLJobQueue
from webhook_app.store.sql.retention import SQLRetention


class SQLStore(SQLIntake, SQLJobQueue, SQLClaims, SQLAuditReads, SQLOperationsLog, SQLRetention, Store):
    """Backend-independent implementation of Store on top of `_tx()`."""

    def check_writable(self) -> None:
        """A write that changes nothing, committed: fails where a delivery's commit would."""
        with self._tx() as c:
            c.run("UPDATE schema_version SET version = version")

    def schema_version(self) -> int:
        with self._tx(write=False) as c:
            if c.one(self.dialect.schema_table_exists) is None:
                return 0
            return schema_version_in(c)

    def ping(self) -> None:
        with self._tx(write=False) as c:
            c.one("SELECT 1 AS ok")

    def database_bytes(self) -> int:
        return self._database_bytes()


__all__ = [
    "INSERT_DELIVERY",
    "Cursorish",
    "Row",
    "SQLBase",
    "SQLStore",
    "delivery_values",
    "schema_version_in",
    "job_order_id",
]
