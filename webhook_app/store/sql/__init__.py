"""The storage contract written once in SQL shared by SQLite and PostgreSQL.

Backends supply a connection inside a transaction (`_tx`), their placeholder style and their DDL;
everything else (the queries that give exactly-once) is here, so both backends behave the same
and the contract tests exercise one piece of logic twice.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import fields
from typing import Any

import orjson

from webhook_app.errors import StoreUnavailable, storable_text
from webhook_app.events import DELIVERY_COLUMNS, Delivery
from webhook_app.policy.decision import SAVE
from webhook_app.states import ActionState, AttemptEnd, CardState, ClaimStatus, DecisionOutcome, JobState
from webhook_app.store.base import (
    ActionClaim,
    ActivityRow,
    CardClaim,
    DecisionRecord,
    DeliveryFilter,
    Job,
    Operation,
    Pruned,
    QueueStats,
    Recorded,
    Status,
    StorageStats,
    Store,
    StoredDelivery,
    Submission,
)

Row = Mapping[str, Any]
#: the actions that touch the wallet (`policy.SAVE`, `policy.USE_WALLET`)
WALLET_ACTIONS = ("save_payment_source", "use_wallet_source")


class Cursorish(abc.ABC):
    """What `_tx` yields: execute a query (with `?` placeholders) and fetch rows as mappings."""

    @abc.abstractmethod
    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None: ...

    @abc.abstractmethod
    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]: ...

    @abc.abstractmethod
    def run(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Execute; return the number of rows changed."""


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


def job_order_id(d: Delivery) -> str:
    """`jobs.order_id` (NOT NULL): the order's id, or "" for a job that is about no order (a
    customer's anonymization), which no order's claims, decisions or reconcile ever match."""
    return d.order_id or ""


class SQLStore(Store):
    """Backend-independent implementation of Store on top of `_tx()`."""

    #: appended to the claim query by backends that can skip rows locked by other workers
    claim_lock_clause = ""
    #: a `decided_at` (POSIX seconds) as whole days since the epoch, UTC
    day_expression = "CAST(decided_at / 86400 AS INTEGER)"

    @abc.abstractmethod
    def _tx(self, *, write: bool = True) -> AbstractContextManager[Cursorish]:
        """A transaction; `write=True` takes the write lock early where the backend needs it."""

    # --- intake ---------------------------------------------------------------------------
    def record_delivery(
        self,
        delivery: Delivery,
        *,
        now: float,
        replay_of: int | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> Recorded:
        with self._tx() as c:
            return self._insert_delivery(c, Submission(delivery, now, replay_of, trace_context))

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
        return Recorded(int(existing["id"]), True, _opt_int(existing["job_id"]), existing["status"])

    def delivery_id_for_identity(self, identity: str) -> int | None:
        with self._tx(write=False) as c:
            row = c.one("SELECT id FROM deliveries WHERE identity = ?", (identity,))
        return None if row is None else int(row["id"])

    # --- jobs -----------------------------------------------------------------------------
    _DUE = "((state = 'pending' AND next_attempt_at <= ?) OR (state = 'running' AND lease_expires_at <= ?))"

    def claim_job(
        self, *, worker: str, lease_seconds: float, now: float, organizations: Sequence[str] | None = None
    ) -> Job | None:
        orgs = None if organizations is None else list(organizations)
        if orgs is not None and not orgs:
            return None
        among = "" if orgs is None else f" AND organization IN ({','.join('?' * len(orgs))})"
        # Look without the write lock first: an idle poll must not block intake.
        with self._tx(write=False) as c:
            due = c.one(f"SELECT id FROM jobs WHERE {self._DUE}{among} LIMIT 1", (now, now, *(orgs or ())))  # nosec B608  # constants and ? placeholders only
        if due is None:
            return None
        with self._tx() as c:
            row = None
            if orgs is None:
                row = c.one(
                    f"SELECT id, state, attempts FROM jobs WHERE {self._DUE}"  # nosec B608  # constants and ? placeholders only
                    " ORDER BY next_attempt_at, id LIMIT 1" + self.claim_lock_clause,
                    (now, now),
                )
            else:
                # Round the organizations: the one whose last turn is oldest goes first.
                turns = {r["organization"]: int(r["turn"]) for r in c.all("SELECT organization, turn FROM org_turns")}
                for org in sorted(orgs, key=lambda o: (turns.get(o, 0), o)):
                    row = c.one(
                        f"SELECT id, state, attempts FROM jobs WHERE organization = ? AND {self._DUE}"  # nosec B608  # constants and ? placeholders only
                        " ORDER BY next_attempt_at, id LIMIT 1" + self.claim_lock_clause,
                        (org, now, now),
                    )
                    if row is not None:
                        c.run(
                            "INSERT INTO org_turns (organization, turn) SELECT ?, COALESCE(MAX(turn), 0) + 1"
                            " FROM org_turns WHERE true ON CONFLICT (organization) DO UPDATE SET turn = excluded.turn",
                            (org,),
                        )
                        break
            if row is None:
                return None
            job_id = int(row["id"])
            if row["state"] == JobState.RUNNING:  # the previous holder's lease ran out (worker died)
                c.run(
                    "UPDATE attempts SET finished_at = ?, outcome = 'lease_expired'"
                    " WHERE job_id = ? AND finished_at IS NULL",
                    (now, job_id),
                )
            lease = now + lease_seconds
            c.run(
                "UPDATE jobs SET state = 'running', lease_owner = ?, lease_expires_at = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (worker, lease, now, job_id),
            )
            attempt = int(row["attempts"]) + 1
            # Numbered on from the job's earlier attempts: a requeue starts the attempt budget
            # (`jobs.attempts`) afresh, not the history, and a deferred attempt keeps its own row.
            numbered = c.one(
                "INSERT INTO attempts (job_id, number, worker, started_at)"
                " SELECT ?, COALESCE(MAX(number), 0) + 1, ?, ? FROM attempts WHERE job_id = ? RETURNING number",
                (job_id, worker, now, job_id),
            )
            assert numbered is not None
            d = c.one(
                "SELECT j.delivery_id, j.order_id, j.topic, j.trace_context, j.organization, d.body, d.received_at,"
                " d.replay_of FROM jobs j JOIN deliveries d ON d.id = j.delivery_id WHERE j.id = ?",
                (job_id,),
            )
            assert d is not None
            return Job(
                id=job_id,
                delivery_id=int(d["delivery_id"]),
                order_id=d["order_id"],
                topic=d["topic"],
                attempts=attempt,
                body=bytes(d["body"]),
                received_at=float(d["received_at"]),
                lease_expires_at=lease,
                replay=d["replay_of"] is not None,
                trace_context=json.loads(d["trace_context"]) if d["trace_context"] else {},
                number=int(numbered["number"]),
                organization=d["organization"],
            )

    def heartbeat(self, job_id: int, *, worker: str, lease_seconds: float, now: float) -> bool:
        """Extend the job's lease and the lease of any action claim it holds."""
        with self._tx() as c:
            held = (
                c.run(
                    "UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE id = ?"
                    " AND state = 'running' AND lease_owner = ?",
                    (now + lease_seconds, now, job_id, worker),
                )
                == 1
            )
            if held:
                c.run(
                    "UPDATE order_actions SET lease_expires_at = ? WHERE job_id = ? AND owner = ?"
                    " AND state = 'in_flight'",
                    (now + lease_seconds, job_id, worker),
                )
                c.run(
                    "UPDATE card_claims SET lease_expires_at = ? WHERE job_id = ? AND owner = ? AND state = 'held'",
                    (now + lease_seconds, job_id, worker),
                )
            return held

    def finish_job(
        self, job_id: int, *, worker: str, decision: DecisionRecord, now: float, action: str | None = None
    ) -> bool:
        with self._tx() as c:
            if not self._release_job(c, job_id, worker, JobState.DONE, None, now, now, decision.outcome):
                return False
            self._insert_decision(c, job_id, decision, now)
            if action is not None:
                c.run(
                    "UPDATE order_actions SET state = 'done', owner = NULL, lease_expires_at = NULL, uncertain = 0,"
                    " wallet_entry_id = ?, updated_at = ? WHERE order_id = (SELECT order_id FROM jobs WHERE id = ?)"
                    " AND organization = (SELECT organization FROM jobs WHERE id = ?)"
                    " AND action = ? AND owner = ? AND state = 'in_flight'",
                    (decision.wallet_entry_id, now, job_id, job_id, action, worker),
                )
                if action == SAVE:  # the save is verified (or known to have ended): its card is free
                    c.run(
                        "UPDATE card_claims SET state = 'open', owner = NULL, lease_expires_at = NULL,"
                        " wallet_entry_id = COALESCE(?, wallet_entry_id), updated_at = ?"
                        " WHERE order_id = (SELECT order_id FROM jobs WHERE id = ?)"
                        " AND organization = (SELECT organization FROM jobs WHERE id = ?)"
                        " AND state = 'held' AND owner = ?",
                        (decision.wallet_entry_id, now, job_id, job_id, worker),
                    )
            return True

    def retry_job(
        self, job_id: int, *, worker: str, error: str, next_attempt_at: float, now: float, count_attempt: bool = True
    ) -> bool:
        with self._tx() as c:
            if not self._release_job(
                c,
                job_id,
                worker,
                JobState.PENDING,
                error,
                next_attempt_at,
                now,
                AttemptEnd.RETRY if count_attempt else AttemptEnd.DEFERRED,
            ):
                return False
            if not count_attempt:
                c.run("UPDATE jobs SET attempts = attempts - 1 WHERE id = ? AND attempts > 0", (job_id,))
            return True

    def dead_letter(self, job_id: int, *, worker: str, error: str, decision: DecisionRecord | None, now: float) -> bool:
        with self._tx() as c:
            if not self._release_job(c, job_id, worker, JobState.DEAD, error, now, now, AttemptEnd.DEAD):
                return False
            if decision is not None:
                self._insert_decision(c, job_id, decision, now)
            return True

    def _release_job(
        self,
        c: Cursorish,
        job_id: int,
        worker: str,
        state: JobState,
        error: str | None,
        next_attempt_at: float,
        now: float,
        outcome: DecisionOutcome | AttemptEnd,
    ) -> bool:
        finished = now if state in (JobState.DONE, JobState.DEAD) else None
        error = None if error is None else storable_text(error)
        changed = c.run(
            "UPDATE jobs SET state = ?, last_error = COALESCE(?, last_error), next_attempt_at = ?,"
            " lease_owner = NULL, lease_expires_at = NULL, updated_at = ?, finished_at = ?"
            " WHERE id = ? AND state = 'running' AND lease_owner = ?",
            (state, error, next_attempt_at, now, finished, job_id, worker),
        )
        if changed != 1:
            return False
        c.run(
            "UPDATE attempts SET finished_at = ?, outcome = ?, error = ? WHERE job_id = ? AND finished_at IS NULL",
            (now, outcome, error, job_id),
        )
        return True

    def _insert_decision(self, c: Cursorish, job_id: int, d: DecisionRecord, now: float) -> None:
        wallet_related = d.action in WALLET_ACTIONS or d.guard is not None
        c.run(
            "INSERT INTO decisions (job_id, delivery_id, order_id, rule, action, reason, guard, outcome,"
            " mode, wallet_entry_id, decided_at, market_id, organization)"
            " SELECT id, delivery_id, order_id, ?, ?, ?, ?, ?, ?, ?, ?, ?, organization FROM jobs WHERE id = ?",
            (
                d.rule,
                d.action,
                storable_text(d.reason, limit=1000),
                d.guard,
                d.outcome,
                d.mode,
                d.wallet_entry_id,
                now,
                self._market_of_job(c, job_id) if wallet_related else None,
                job_id,
            ),
        )

    @staticmethod
    def _market_of_job(c: Cursorish, job_id: int) -> str | None:
        """The order's market id, from the job's stored body (linkage only when the webhook
        included `market`); None when the body does not say or is gone."""
        row = c.one(
            "SELECT d.body FROM jobs j JOIN deliveries d ON d.id = j.delivery_id"
            " WHERE j.id = ? AND d.body_removed_at IS NULL",
            (job_id,),
        )
        if row is None or row["body"] is None:
            return None
        try:
            doc = orjson.loads(bytes(row["body"]))
            market = doc["data"]["relationships"]["market"]["data"]["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        return market[:64] if isinstance(market, str) and market else None

    def wallet_activity(self, *, since: float) -> list[ActivityRow]:
        day = self.day_expression
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

    def requeue(self, job_id: int, *, now: float) -> bool:
        with self._tx() as c:
            return (
                c.run(
                    "UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                    " updated_at = ?, finished_at = NULL WHERE id = ? AND state = 'dead'",
                    (now, now, job_id),
                )
                == 1
            )

    # --- action claims ----------------------------------------------------------------------
    def begin_action(
        self,
        order_id: str,
        action: str,
        *,
        worker: str,
        job_id: int,
        lease_seconds: float,
        now: float,
        organization: str = "",
    ) -> ActionClaim:
        with self._tx() as c:
            lease = now + lease_seconds
            inserted = c.run(
                "INSERT INTO order_actions (organization, order_id, action, state, owner, lease_expires_at, uncertain,"
                " job_id, updated_at) VALUES (?,?,?,'in_flight',?,?,0,?,?)"
                " ON CONFLICT (organization, order_id, action) DO NOTHING",
                (organization, order_id, action, worker, lease, job_id, now),
            )
            if inserted == 1:
                return ActionClaim(ClaimStatus.ACQUIRED)
            row = c.one(
                "SELECT state, owner, lease_expires_at, uncertain, wallet_entry_id FROM order_actions"  # nosec B608  # constants and ? placeholders only
                " WHERE organization = ? AND order_id = ? AND action = ?"
                + self.claim_lock_clause.replace(" SKIP LOCKED", ""),
                (organization, order_id, action),
            )
            assert row is not None
            if row["state"] == ActionState.DONE:
                return ActionClaim(ClaimStatus.DONE, wallet_entry_id=row["wallet_entry_id"])
            live = (
                row["state"] == ActionState.IN_FLIGHT
                and row["lease_expires_at"] is not None
                and float(row["lease_expires_at"]) > now
                and row["owner"] != worker
            )
            if live:
                return ActionClaim(ClaimStatus.BUSY)
            # open (an earlier attempt failed cleanly or uncertainly) or in flight by a dead worker
            uncertain = bool(row["uncertain"]) or row["state"] == ActionState.IN_FLIGHT
            c.run(
                "UPDATE order_actions SET state = 'in_flight', owner = ?, lease_expires_at = ?, uncertain = ?,"
                " job_id = ?, updated_at = ? WHERE organization = ? AND order_id = ? AND action = ?",
                (worker, lease, int(uncertain), job_id, now, organization, order_id, action),
            )
            return ActionClaim(ClaimStatus.ACQUIRED, uncertain=uncertain)

    def release_action(
        self,
        order_id: str,
        action: str,
        *,
        worker: str,
        uncertain: bool,
        now: float,
        hold_until: float | None = None,
        organization: str = "",
    ) -> None:
        with self._tx() as c:
            released = c.run(
                "UPDATE order_actions SET state = 'open', owner = NULL, lease_expires_at = NULL,"
                " uncertain = ?, updated_at = ? WHERE organization = ? AND order_id = ? AND action = ?"
                " AND state = 'in_flight' AND owner = ?",
                (int(uncertain), now, organization, order_id, action, worker),
            )
            if released != 1 or action != SAVE:
                return
            if uncertain:
                # The save may still land: the card stays this order's until its next attempt has
                # looked (or the hold runs out), so no other order saves the card meanwhile.
                c.run(
                    "UPDATE card_claims SET owner = NULL, lease_expires_at = COALESCE(?, lease_expires_at),"
                    " updated_at = ? WHERE organization = ? AND order_id = ? AND state = 'held' AND owner = ?",
                    (hold_until, now, organization, order_id, worker),
                )
            else:
                c.run(
                    "UPDATE card_claims SET state = 'open', owner = NULL, lease_expires_at = NULL, updated_at = ?"
                    " WHERE organization = ? AND order_id = ? AND state = 'held' AND owner = ?",
                    (now, organization, order_id, worker),
                )

    def action_state(self, order_id: str, action: str, *, organization: str = "") -> ActionState | None:
        with self._tx(write=False) as c:
            row = c.one(
                "SELECT state FROM order_actions WHERE organization = ? AND order_id = ? AND action = ?",
                (organization, order_id, action),
            )
            return None if row is None else ActionState(row["state"])

    # --- card claims ------------------------------------------------------------------------
    def _serialize(self, c: Cursorish, key: str) -> None:  # SQLite: the write lock already does
        """Serialize the rest of this transaction with others that name `key` (PostgreSQL reads
        committed data statement by statement: a claim spanning several rows needs this)."""

    def claim_card(
        self,
        customer_id: str,
        card_key: str,
        *,
        order_id: str,
        worker: str,
        job_id: int,
        lease_seconds: float,
        now: float,
        organization: str = "",
    ) -> CardClaim:
        with self._tx() as c:
            self._serialize(c, f"card\x00{organization}\x00{customer_id}")
            if card_key:
                rows = c.all(
                    "SELECT card_key, state, order_id, lease_expires_at, wallet_entry_id FROM card_claims"
                    " WHERE organization = ? AND customer_id = ? AND card_key IN (?, '')",
                    (organization, customer_id, card_key),
                )
            else:  # the card is not known: it may be any of the customer's
                rows = c.all(
                    "SELECT card_key, state, order_id, lease_expires_at, wallet_entry_id FROM card_claims"
                    " WHERE organization = ? AND customer_id = ?",
                    (organization, customer_id),
                )
            for r in rows:
                if (
                    r["state"] == CardState.HELD
                    and r["order_id"] != order_id
                    and r["lease_expires_at"] is not None
                    and float(r["lease_expires_at"]) > now
                ):
                    return CardClaim(ClaimStatus.BUSY, holder=str(r["order_id"]))
            last = next((r["wallet_entry_id"] for r in rows if r["card_key"] == card_key), None)
            c.run(
                "INSERT INTO card_claims (organization, customer_id, card_key, state, order_id, owner, job_id,"
                " lease_expires_at, updated_at) VALUES (?,?,?,'held',?,?,?,?,?)"
                " ON CONFLICT (organization, customer_id, card_key) DO UPDATE SET state = 'held',"
                " order_id = excluded.order_id, owner = excluded.owner, job_id = excluded.job_id,"
                " lease_expires_at = excluded.lease_expires_at, updated_at = excluded.updated_at",
                (organization, customer_id, card_key, order_id, worker, job_id, now + lease_seconds, now),
            )
            return CardClaim(ClaimStatus.ACQUIRED, fresh=not rows, wallet_entry_id=last)

    # --- named leases -------------------------------------------------------------------------
    def take_lease(self, name: str, *, owner: str, seconds: float, now: float) -> bool:
        with self._tx() as c:
            return (
                c.run(
                    "INSERT INTO leases (name, owner, expires_at) VALUES (?,?,?) ON CONFLICT (name) DO UPDATE"
                    " SET owner = excluded.owner, expires_at = excluded.expires_at"
                    " WHERE leases.expires_at <= ? OR leases.owner = excluded.owner",
                    (name, owner, now + seconds, now),
                )
                == 1
            )

    def release_lease(self, name: str, *, owner: str) -> None:
        with self._tx() as c:
            c.run("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    # --- reading --------------------------------------------------------------------------
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

    def record_attempt_traces(
        self, job_id: int, attempt: int, *, trace_id: str | None, cl_trace_ids: Sequence[str]
    ) -> None:
        with self._tx() as c:
            c.run(
                "UPDATE attempts SET trace_id = ?, cl_trace_ids = ? WHERE id ="
                " (SELECT MAX(id) FROM attempts WHERE job_id = ? AND number = ?)",
                (trace_id, ",".join(cl_trace_ids) or None, job_id, attempt),
            )

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

    def job_state(self, job_id: int) -> JobState | None:
        with self._tx(write=False) as c:
            row = c.one("SELECT state FROM jobs WHERE id = ?", (job_id,))
        return JobState(row["state"]) if row else None

    def orders_with_jobs(self, order_ids: list[str], *, organization: str | None = None) -> set[str]:
        found: set[str] = set()
        whose = "" if organization is None else " AND organization = ?"
        extra: tuple[str, ...] = () if organization is None else (organization,)
        for chunk in _chunks(order_ids, 500):
            marks = ",".join("?" * len(chunk))
            with self._tx(write=False) as c:
                rows = c.all(f"SELECT DISTINCT order_id FROM jobs WHERE order_id IN ({marks}){whose}", (*chunk, *extra))  # nosec B608  # constants and ? placeholders only
            found |= {r["order_id"] for r in rows}
        return found

    def check_writable(self) -> None:
        """A write that changes nothing, committed: fails where a delivery's commit would."""
        with self._tx() as c:
            c.run("UPDATE schema_version SET version = version")

    # --- retention and erasure ---------------------------------------------------------------
    #: deliveries whose work is over: no job (ignored topics), or a job done or dead
    _SETTLED = "NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = d.id AND j.state IN ('pending', 'running'))"

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
                + self.claim_lock_clause,
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
        settled = f" AND {self._SETTLED.replace('d.id', 'deliveries.id')}" if settled_only else ""
        return c.run(
            f"UPDATE deliveries SET body = ?, headers = '{{}}', body_removed_at = ?, body_removed_why = ?"  # nosec B608  # constants and ? placeholders only
            f" WHERE body_removed_at IS NULL AND id IN ({marks}){settled}",
            (b"", now, why, *ids),
        )

    def remove_bodies(self, ids: Sequence[int], *, why: str, now: float) -> int:
        done = 0
        for chunk in _chunks(list(ids), 500):
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

    def database_bytes(self) -> int:
        return self._database_bytes()

    @abc.abstractmethod
    def _database_bytes(self) -> int:
        """The size of this service's data in bytes, as each dialect can tell it."""


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _status(row: Row) -> Status:
    return Status(
        name=row["name"],
        state=row["state"],
        since=float(row["since"]),
        reason=row["reason"],
        source=row["source"],
        updated_at=float(row["updated_at"]),
    )


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
        replay_of=_opt_int(row["replay_of"]),
        job=job,
        decisions=decisions,
        attempts=attempts,
        body_removed=row["body_removed_why"],
    )
