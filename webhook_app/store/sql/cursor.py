"""What the SQL mixins share: a cursor on one transaction, and the base each mixin builds on."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from webhook_app.store.sql.dialect import Dialect

Row = Mapping[str, Any]


class Cursorish(abc.ABC):
    """What `_tx` yields: execute a query (with `?` placeholders) and fetch rows as mappings."""

    @abc.abstractmethod
    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None: ...

    @abc.abstractmethod
    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]: ...

    @abc.abstractmethod
    def run(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Execute; return the number of rows changed."""


class SQLBase(abc.ABC):
    """A backend's transactions and dialect, which every mixin of `SQLStore` uses."""

    #: the statements that differ between SQLite and PostgreSQL (`dialect.py`)
    dialect: ClassVar[Dialect]

    @abc.abstractmethod
    def _tx(self, *, write: bool = True) -> AbstractContextManager[Cursorish]:
        """A transaction; `write=True` takes the write lock early where the backend needs it."""

    def _claim_tx(self) -> AbstractContextManager[Cursorish]:
        """The job claim's write transaction: by default like any other. A backend may skip
        waiting for its commit to reach the disk (SQLite: `SQLiteStore._claim_tx`): nothing
        leaves the worker on the strength of a claim before its next commit, which is synced."""
        return self._tx()

    def _serialize(self, c: Cursorish, key: str) -> None:  # noqa: B027 - SQLite: the write lock already does
        """Serialize the rest of this transaction with others that name `key` (PostgreSQL reads
        committed data statement by statement: a claim spanning several rows needs this)."""

    @abc.abstractmethod
    def _database_bytes(self) -> int:
        """The size of this service's data in bytes, as each dialect can tell it."""


def placeholders(n: int) -> str:
    """`?,?,...`: `n` placeholders for an IN list."""
    return ",".join("?" * n)


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def schema_version_in(c: Cursorish) -> int:
    """The version the `schema_version` table records (0 when it records none)."""
    row = c.one("SELECT MAX(version) AS v FROM schema_version")
    return int(row["v"]) if row and row["v"] is not None else 0
