"""Retention and erasure in SQL: prune settled deliveries, redact or remove bodies."""

from __future__ import annotations

from collections.abc import Sequence

from webhook_app.store.base import (
    Pruned,
    StorageStats,
)
from webhook_app.store.ports import Retention
from webhook_app.store.sql.cursor import Cursorish, SQLBase, chunks


def _settled(deliveries: str) -> str:
    """The condition that the delivery `deliveries` (a table name or alias) is settled."""
    return (
        f"NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = {deliveries}.id AND j.state IN ('pending', 'running'))"  # nosec B608  # a table name from this module and constants only
    )


class SQLRetention(SQLBase, Retention):
    #: deliveries whose work is over: no job (ignored topics), or a job done or dead
    _SETTLED = _settled("d")

    def prune(
        self, *, bodies_before: float, records_before: float, limit: int, now: float, dry_run: bool = False
    ) -> Pruned:
        with self._tx(write=not dry_run) as c:
            body_ids = [
                int(r["id"])
                for r in c.all(
                    "SELECT d.id FROM deliveries d WHERE d.body_removed_at IS NULL AND d.received_at < ?"  # nosec B608  # constants and ? placeholders only
                    f" AND {self._SETTLED} ORDER BY d.received_at LIMIT ?",
                    (bodies_before, limit),
                )
            ]
            old_ids = [
                int(r["id"])
                for r in c.all(
                    f"SELECT d.id FROM deliveries d WHERE d.received_at < ? AND {self._SETTLED}"  # nosec B608  # constants and ? placeholders only
                    " ORDER BY d.received_at LIMIT ?",
                    (records_before, limit),
                )
            ]
            if dry_run:
                return Pruned(len(body_ids), len(old_ids))
            # A job requeued since the selects above (PostgreSQL reads each statement's own
            # snapshot) must keep its body and its records: the settled jobs are locked first,
            # and every statement that removes checks the job's state again.
            body_ids = self._still_settled(c, body_ids)
            old_ids = self._still_settled(c, old_ids)
            if body_ids:
                self._remove_bodies(c, body_ids, "retention", now, settled_only=True)
            gone = 0
            if old_ids:
                marks = ",".join("?" * len(old_ids))
                ids = tuple(old_ids)
                # A replay outlives its original's record: it keeps its own, without the link.
                c.run(f"UPDATE deliveries SET replay_of = NULL WHERE replay_of IN ({marks})", ids)  # nosec B608  # constants and ? placeholders only
                jobs = f"SELECT id FROM jobs WHERE delivery_id IN ({marks}) AND state IN ('done', 'dead')"  # nosec B608  # constants and ? placeholders only
                c.run(f"DELETE FROM attempts WHERE job_id IN ({jobs})", ids)  # nosec B608  # constants and ? placeholders only
                c.run(f"DELETE FROM decisions WHERE job_id IN ({jobs})", ids)  # nosec B608  # constants and ? placeholders only
                c.run(f"DELETE FROM jobs WHERE delivery_id IN ({marks}) AND state IN ('done', 'dead')", ids)  # nosec B608  # constants and ? placeholders only
                gone = c.run(
                    f"DELETE FROM deliveries WHERE id IN ({marks})"  # nosec B608  # constants and ? placeholders only
                    " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = deliveries.id)",
                    ids,
                )
            return Pruned(len(body_ids), gone)

    def _still_settled(self, c: Cursorish, ids: list[int]) -> list[int]:
        """Of `ids`, the deliveries whose job is done or dead now (locked until the transaction
        ends, so a requeue waits for it: PostgreSQL skips a job locked by a requeue under way) or
        that have no job."""
        if not ids:
            return ids
        marks = ",".join("?" * len(ids))
        locked = {
            int(r["delivery_id"])
            for r in c.all(
                f"SELECT delivery_id FROM jobs WHERE delivery_id IN ({marks}) AND state IN ('done', 'dead')"  # nosec B608  # constants and ? placeholders only
                + self.dialect.lock_skip_locked,
                tuple(ids),
            )
        }
        with_job = {
            int(r["delivery_id"])
            for r in c.all(f"SELECT delivery_id FROM jobs WHERE delivery_id IN ({marks})", tuple(ids))  # nosec B608  # constants and ? placeholders only
        }
        return [i for i in ids if i in locked or i not in with_job]

    def _remove_bodies(self, c: Cursorish, ids: list[int], why: str, now: float, *, settled_only: bool = False) -> int:
        marks = ",".join("?" * len(ids))
        settled = f" AND {_settled('deliveries')}" if settled_only else ""
        return c.run(
            f"UPDATE deliveries SET body = ?, headers = '{{}}', body_removed_at = ?, body_removed_why = ?"  # nosec B608  # constants and ? placeholders only
            f" WHERE body_removed_at IS NULL AND id IN ({marks}){settled}",
            (b"", now, why, *ids),
        )

    def remove_bodies(self, ids: Sequence[int], *, why: str, now: float) -> int:
        done = 0
        for chunk in chunks(list(ids), 500):
            with self._tx() as c:
                done += self._remove_bodies(c, chunk, why, now)
        return done

    def bodies_to_redact(self, *, before: float, limit: int) -> list[tuple[int, bytes]]:
        with self._tx(write=False) as c:
            rows = c.all(
                "SELECT d.id, d.body FROM deliveries d WHERE d.body_removed_at IS NULL AND d.redacted_at IS NULL"  # nosec B608  # constants and ? placeholders only
                f" AND d.received_at < ? AND {self._SETTLED} ORDER BY d.received_at LIMIT ?",
                (before, limit),
            )
        return [(int(r["id"]), bytes(r["body"])) for r in rows]

    def replace_bodies(self, items: Sequence[tuple[int, bytes]], *, now: float) -> int:
        done = 0
        with self._tx() as c:
            for delivery_id, body in items:
                done += c.run(
                    "UPDATE deliveries SET body = ?, redacted_at = ? WHERE id = ? AND body_removed_at IS NULL",
                    (body, now, delivery_id),
                )
        return done

    def bodies_after(self, after_id: int, *, limit: int, organization: str | None = None) -> list[tuple[int, bytes]]:
        whose = "" if organization is None else " AND organization = ?"
        extra: tuple[str, ...] = () if organization is None else (organization,)
        with self._tx(write=False) as c:
            rows = c.all(
                f"SELECT id, body FROM deliveries WHERE id > ? AND body_removed_at IS NULL{whose} ORDER BY id LIMIT ?",  # nosec B608  # constants and ? placeholders only
                (after_id, *extra, limit),
            )
        return [(int(r["id"]), bytes(r["body"])) for r in rows]

    def storage_stats(self) -> StorageStats:
        with self._tx(write=False) as c:
            oldest = c.one("SELECT MIN(received_at) AS t FROM deliveries")
            kept = c.one("SELECT COUNT(*) AS n FROM deliveries WHERE body_removed_at IS NULL")
        t = oldest["t"] if oldest else None
        return StorageStats(
            bytes=self._database_bytes(),
            oldest_received_at=None if t is None else float(t),
            bodies_kept=int(kept["n"]) if kept else 0,
        )
