"""The operations log and the service status in SQL."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from webhook_app.errors import storable_text
from webhook_app.store.base import (
    Operation,
    Status,
)
from webhook_app.store.ports import OperationsLog
from webhook_app.store.sql.cursor import Row, SQLBase


class SQLOperationsLog(SQLBase, OperationsLog):
    def record_operation(
        self, kind: str, *, subject: str | None, detail: Mapping[str, Any], now: float, organization: str = ""
    ) -> int:
        text = storable_text(
            json.dumps(dict(detail), separators=(",", ":"), ensure_ascii=False, default=str), limit=100_000
        )
        with self._tx() as c:
            row = c.one(
                "INSERT INTO operations (at, kind, subject, detail, organization) VALUES (?,?,?,?,?) RETURNING id",
                (now, kind, subject, text, organization),
            )
        assert row is not None
        return int(row["id"])

    def list_operations(
        self, *, kind: str | None = None, limit: int = 100, before_id: int | None = None, subject: str | None = None
    ) -> list[Operation]:
        where: list[str] = []
        params: list[Any] = []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if subject is not None:
            where.append("subject = ?")
            params.append(subject)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        with self._tx(write=False) as c:
            rows = c.all(
                f"SELECT id, at, kind, subject, detail FROM operations{clause} ORDER BY id DESC LIMIT ?",  # nosec B608  # constants and ? placeholders only
                (*params, limit),
            )
        return [Operation(int(r["id"]), float(r["at"]), r["kind"], r["subject"], json.loads(r["detail"])) for r in rows]

    def set_status(self, name: str, state: str, *, reason: str | None, source: str | None, now: float) -> Status:
        reason = None if reason is None else storable_text(reason, limit=1000)
        with self._tx() as c:
            row = c.one(
                "INSERT INTO service_status (name, state, since, reason, source, updated_at) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT (name) DO UPDATE SET state = excluded.state, reason = excluded.reason,"
                " source = excluded.source, updated_at = excluded.updated_at, since = CASE"
                " WHEN service_status.state = excluded.state THEN service_status.since ELSE excluded.since END"
                " RETURNING name, state, since, reason, source, updated_at",
                (name, state, now, reason, source, now),
            )
        assert row is not None
        return _status(row)

    def get_status(self, name: str) -> Status | None:
        with self._tx(write=False) as c:
            row = c.one(
                "SELECT name, state, since, reason, source, updated_at FROM service_status WHERE name = ?", (name,)
            )
        return None if row is None else _status(row)

    def operations_since(self, kinds: Sequence[str], *, since: float, limit: int = 100_000) -> list[Operation]:
        if not kinds:
            return []
        marks = ",".join("?" * len(kinds))
        with self._tx(write=False) as c:
            rows = c.all(
                f"SELECT id, at, kind, subject, detail FROM operations WHERE kind IN ({marks}) AND at >= ?"  # nosec B608  # constants and ? placeholders only
                " ORDER BY id LIMIT ?",
                (*kinds, since, limit),
            )
        return [Operation(int(r["id"]), float(r["at"]), r["kind"], r["subject"], json.loads(r["detail"])) for r in rows]


def _status(row: Row) -> Status:
    return Status(
        name=row["name"],
        state=row["state"],
        since=float(row["since"]),
        reason=row["reason"],
        source=row["source"],
        updated_at=float(row["updated_at"]),
    )
