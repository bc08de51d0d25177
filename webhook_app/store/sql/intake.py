"""Intake in SQL: a delivery once (its identity is unique) and, for an order or anonymization event, its job."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from webhook_app.errors import StoreUnavailable
from webhook_app.events import DELIVERY_COLUMNS, Delivery
from webhook_app.store.base import (
    Recorded,
    Submission,
)
from webhook_app.store.ports import IntakeStore
from webhook_app.store.sql.cursor import Cursorish, SQLBase, opt_int

#: a delivery's row: its own columns (`Delivery.to_row`), then what the store adds
INSERT_COLUMNS = (*DELIVERY_COLUMNS, "received_at", "status", "replay_of")
INSERT_DELIVERY = (
    f"INSERT INTO deliveries ({', '.join(INSERT_COLUMNS)}) VALUES ({','.join('?' * len(INSERT_COLUMNS))})"  # nosec B608  # constants and ? placeholders only
    " ON CONFLICT (identity) DO NOTHING"
)


def delivery_values(s: Submission, status: str) -> tuple[Any, ...]:
    """A submission's values for INSERT_COLUMNS."""
    row = s.delivery.to_row()
    row.update(received_at=s.now, status=status, replay_of=s.replay_of)
    return tuple(row[name] for name in INSERT_COLUMNS)


def job_order_id(d: Delivery) -> str:
    """`jobs.order_id` (NOT NULL): the order's id, or "" for a job that is about no order (a
    customer's anonymization), which no order's claims, decisions or reconcile ever match."""
    return d.order_id or ""


class SQLIntake(SQLBase, IntakeStore):
    def record_deliveries(self, batch: Sequence[Submission]) -> list[Recorded]:
        if not batch:
            return []
        with self._tx() as c:
            return [self._insert_delivery(c, s) for s in batch]

    def _insert_delivery(self, c: Cursorish, s: Submission) -> Recorded:
        """The delivery and, for an order or anonymization event, its job, inside the caller's transaction."""
        delivery, now = s.delivery, s.now
        status = "queued" if delivery.queued else "ignored"
        row = c.one(INSERT_DELIVERY + " RETURNING id", delivery_values(s, status))
        if row is None:
            return self._stored_duplicate(c, delivery.identity)
        delivery_id = int(row["id"])
        job_id = None
        if delivery.queued:
            job = c.one(
                "INSERT INTO jobs (delivery_id, order_id, topic, state, attempts, next_attempt_at,"
                " created_at, updated_at, trace_context, organization) VALUES (?,?,?,'pending',0,?,?,?,?,?)"
                " RETURNING id",
                (
                    delivery_id,
                    job_order_id(delivery),
                    delivery.topic,
                    now,
                    now,
                    now,
                    json.dumps(dict(s.trace_context)) if s.trace_context else None,
                    delivery.organization,
                ),
            )
            job_id = int(job["id"]) if job else None
        return Recorded(delivery_id, False, job_id, status)

    def _stored_duplicate(self, c: Cursorish, identity: str) -> Recorded:
        """The stored delivery an insert conflicted with (same identity), as a duplicate."""
        existing = c.one(
            "SELECT d.id, d.status, j.id AS job_id FROM deliveries d"
            " LEFT JOIN jobs j ON j.delivery_id = d.id WHERE d.identity = ?",
            (identity,),
        )
        if existing is None:  # pragma: no cover - a conflicting row always exists once committed
            raise StoreUnavailable("delivery conflicted but could not be read back")
        return Recorded(int(existing["id"]), True, opt_int(existing["job_id"]), existing["status"])

    def delivery_id_for_identity(self, identity: str) -> int | None:
        with self._tx(write=False) as c:
            row = c.one("SELECT id FROM deliveries WHERE identity = ?", (identity,))
        return None if row is None else int(row["id"])
