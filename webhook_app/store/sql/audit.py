"""Audit reads in SQL: deliveries with their job, decisions and attempts; queue and decision counts."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from webhook_app.events import Delivery
from webhook_app.states import JobState
from webhook_app.store.base import (
    ActivityRow,
    DeliveryFilter,
    QueueStats,
    StoredDelivery,
)
from webhook_app.store.ports import AuditReads
from webhook_app.store.sql.cursor import Row, SQLBase, chunks, opt_int
from webhook_app.store.sql.intake import INSERT_COLUMNS
from webhook_app.store.sql.queue import WALLET_ACTIONS


def _delivery_columns(*, with_body: bool) -> str:
    """The select list of a stored delivery and its job (`_delivery` reads it); without the
    body, NULL in its place (a page of 1 MiB bodies is 1 MiB a row)."""
    own = (
        f"d.{name}" if with_body or name != "body" else "NULL AS body"
        for name in ("id", *INSERT_COLUMNS, "body_removed_why")
    )
    return (
        ", ".join(own) + ", j.id AS job_id, j.state AS job_state,"
        " j.attempts AS job_attempts, j.next_attempt_at AS job_next_attempt_at, j.last_error AS job_last_error,"
        " j.lease_owner AS job_lease_owner, j.lease_expires_at AS job_lease_expires_at,"
        " j.finished_at AS job_finished_at"
    )


class SQLAuditReads(SQLBase, AuditReads):
    _DELIVERY_COLUMNS = _delivery_columns(with_body=True)
    _DELIVERY_COLUMNS_WITHOUT_BODY = _delivery_columns(with_body=False)

    def get_delivery(self, delivery_id: int) -> StoredDelivery | None:
        with self._tx(write=False) as c:
            row = c.one(
                f"SELECT {self._DELIVERY_COLUMNS} FROM deliveries d LEFT JOIN jobs j"  # nosec B608  # constants and ? placeholders only
                " ON j.delivery_id = d.id WHERE d.id = ?",
                (delivery_id,),
            )
            if row is None:
                return None
            decisions = c.all(
                "SELECT id, rule, action, reason, guard, outcome, mode, wallet_entry_id, decided_at"
                " FROM decisions WHERE delivery_id = ? ORDER BY id",
                (delivery_id,),
            )
            attempts = (
                []
                if row["job_id"] is None
                else c.all(
                    "SELECT number, worker, started_at, finished_at, outcome, error, trace_id, cl_trace_ids"
                    " FROM attempts"
                    " WHERE job_id = ? ORDER BY number, id",
                    (row["job_id"],),
                )
            )
            return _delivery(row, [dict(r) for r in decisions], [dict(r) for r in attempts])

    def list_deliveries(self, flt: DeliveryFilter) -> list[StoredDelivery]:
        where: list[str] = []
        params: list[Any] = []
        status_column = "d.status" if flt.status in ("queued", "ignored") else "j.state"
        for condition, value in (
            ("d.topic = ?", flt.topic),
            ("d.order_id = ?", flt.order_id),
            (f"{status_column} = ?", flt.status),
            ("d.received_at >= ?", flt.since),
            ("d.received_at < ?", flt.until),
            ("d.id < ?", flt.before_id),
            ("d.organization = ?", flt.organization),
        ):
            if value is not None:
                where.append(condition)
                params.append(value)
        if flt.decision is not None:
            where.append(
                "EXISTS (SELECT 1 FROM decisions x WHERE x.delivery_id = d.id"
                " AND x.id = (SELECT MAX(y.id) FROM decisions y WHERE y.delivery_id = d.id)"
                " AND (x.action = ? OR x.outcome = ? OR x.rule = ?))"
            )
            params += [flt.decision] * 3
        columns = self._DELIVERY_COLUMNS if flt.with_body else self._DELIVERY_COLUMNS_WITHOUT_BODY
        sql = (
            f"SELECT {columns} FROM deliveries d LEFT JOIN jobs j ON j.delivery_id = d.id"  # nosec B608  # constants and ? placeholders only
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY d.id DESC LIMIT ?"
        )
        params.append(max(1, min(flt.limit, 10_000)))
        with self._tx(write=False) as c:
            rows = c.all(sql, tuple(params))
            ids = [int(r["id"]) for r in rows]
            latest: dict[int, dict[str, Any]] = {}
            if ids:
                marks = ",".join("?" * len(ids))
                for r in c.all(
                    f"SELECT delivery_id, id, rule, action, reason, guard, outcome, mode,"  # nosec B608  # constants and ? placeholders only
                    f" wallet_entry_id, decided_at FROM decisions WHERE delivery_id IN ({marks})"
                    " ORDER BY id",
                    tuple(ids),
                ):
                    latest[int(r["delivery_id"])] = {k: r[k] for k in r.keys() if k != "delivery_id"}  # noqa: SIM118 - a sqlite3.Row iterates its values
        return [_delivery(r, [latest[int(r["id"])]] if int(r["id"]) in latest else [], []) for r in rows]

    def queue_stats(self, *, now: float) -> QueueStats:
        with self._tx(write=False) as c:
            counts = {r["state"]: int(r["n"]) for r in c.all("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
            oldest = c.one(
                "SELECT MIN(d.received_at) AS t FROM jobs j JOIN deliveries d ON d.id = j.delivery_id"
                " WHERE j.state IN ('pending', 'running')"
            )
        t = oldest["t"] if oldest else None
        return QueueStats(
            pending=counts.get(JobState.PENDING, 0),
            running=counts.get(JobState.RUNNING, 0),
            done=counts.get(JobState.DONE, 0),
            dead=counts.get(JobState.DEAD, 0),
            oldest_pending_age=max(0.0, now - float(t)) if t is not None else 0.0,
        )

    def decision_counts(self) -> list[tuple[str, str, str, int]]:
        with self._tx(write=False) as c:
            rows = c.all(
                "SELECT rule, action, outcome, COUNT(*) AS n FROM decisions"
                " GROUP BY rule, action, outcome ORDER BY rule, action, outcome"
            )
        return [(r["rule"], r["action"], r["outcome"], int(r["n"])) for r in rows]

    def wallet_activity(self, *, since: float) -> list[ActivityRow]:
        day = self.dialect.day_of_decision
        with self._tx(write=False) as c:
            rows = c.all(
                f"SELECT {day} AS day, market_id, rule, action, outcome, guard, COUNT(*) AS n FROM decisions"  # nosec B608  # constants and ? placeholders only
                " WHERE decided_at >= ? AND (action IN (?, ?) OR guard IS NOT NULL)"
                f" GROUP BY {day}, market_id, rule, action, outcome, guard",
                (since, *WALLET_ACTIONS),
            )
        return [
            ActivityRow(int(r["day"]), r["market_id"], r["rule"], r["action"], r["outcome"], r["guard"], int(r["n"]))
            for r in rows
        ]

    def orders_with_jobs(self, order_ids: list[str], *, organization: str | None = None) -> set[str]:
        found: set[str] = set()
        whose = "" if organization is None else " AND organization = ?"
        extra: tuple[str, ...] = () if organization is None else (organization,)
        for chunk in chunks(order_ids, 500):
            marks = ",".join("?" * len(chunk))
            with self._tx(write=False) as c:
                rows = c.all(f"SELECT DISTINCT order_id FROM jobs WHERE order_id IN ({marks}){whose}", (*chunk, *extra))  # nosec B608  # constants and ? placeholders only
            found |= {r["order_id"] for r in rows}
        return found


def _delivery(row: Row, decisions: list[dict[str, Any]], attempts: list[dict[str, Any]]) -> StoredDelivery:
    delivery = Delivery.from_row(row)
    job = None
    if row["job_id"] is not None:
        job = {
            "id": int(row["job_id"]),
            "state": row["job_state"],
            "attempts": int(row["job_attempts"]),
            "next_attempt_at": row["job_next_attempt_at"],
            "last_error": row["job_last_error"],
            "lease_owner": row["job_lease_owner"],
            "lease_expires_at": row["job_lease_expires_at"],
            "finished_at": row["job_finished_at"],
        }
    return StoredDelivery(
        **{f.name: getattr(delivery, f.name) for f in fields(delivery)},
        id=int(row["id"]),
        order_id=row["order_id"],
        received_at=float(row["received_at"]),
        status=row["status"],
        replay_of=opt_int(row["replay_of"]),
        job=job,
        decisions=decisions,
        attempts=attempts,
        body_removed=row["body_removed_why"],
    )
