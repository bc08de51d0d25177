"""The job queue in SQL: lease the due job, keep the lease, and end the attempt with its decision."""

from __future__ import annotations

import json
from collections.abc import Sequence

import orjson

from webhook_app.errors import storable_text
from webhook_app.policy.decision import SAVE
from webhook_app.states import AttemptEnd, DecisionOutcome, JobState
from webhook_app.store.base import (
    DecisionRecord,
    Job,
)
from webhook_app.store.ports import JobQueue
from webhook_app.store.sql.cursor import Cursorish, Row, SQLBase

#: the actions that touch the wallet (`policy.SAVE`, `policy.USE_WALLET`)
WALLET_ACTIONS = ("save_payment_source", "use_wallet_source")


#: a job due to be claimed: pending and its time come, or running with its lease run out (params: now, now)
DUE = "((state = 'pending' AND next_attempt_at <= ?) OR (state = 'running' AND lease_expires_at <= ?))"


class SQLJobQueue(SQLBase, JobQueue):
    def claim_job(
        self, *, worker: str, lease_seconds: float, now: float, organizations: Sequence[str] | None = None
    ) -> Job | None:
        orgs = None if organizations is None else list(organizations)
        if orgs is not None and not orgs:
            return None
        among = "" if orgs is None else f" AND organization IN ({','.join('?' * len(orgs))})"
        # Look without the write lock first: an idle poll must not block intake.
        with self._tx(write=False) as c:
            due = c.one(f"SELECT id FROM jobs WHERE {DUE}{among} LIMIT 1", (now, now, *(orgs or ())))  # nosec B608  # constants and ? placeholders only
        if due is None:
            return None
        with self._claim_tx() as c:
            row = None
            if orgs is None:
                row = c.one(
                    f"SELECT id, state, attempts FROM jobs WHERE {DUE}"  # nosec B608  # constants and ? placeholders only
                    " ORDER BY next_attempt_at, id LIMIT 1" + self.dialect.lock_skip_locked,
                    (now, now),
                )
            else:
                # Round the organizations: the one whose last turn is oldest goes first.
                turns = {r["organization"]: int(r["turn"]) for r in c.all("SELECT organization, turn FROM org_turns")}
                for org in sorted(orgs, key=lambda o: (turns.get(o, 0), o)):
                    row = c.one(
                        f"SELECT id, state, attempts FROM jobs WHERE organization = ? AND {DUE}"  # nosec B608  # constants and ? placeholders only
                        " ORDER BY next_attempt_at, id LIMIT 1" + self.dialect.lock_skip_locked,
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
                "SELECT j.id, j.delivery_id, j.order_id, j.topic, j.trace_context, j.organization, d.body,"
                " d.received_at, d.replay_of FROM jobs j JOIN deliveries d ON d.id = j.delivery_id WHERE j.id = ?",
                (job_id,),
            )
            assert d is not None
            return job_from_row({**d, "attempts": attempt, "number": numbered["number"]}, lease_expires_at=lease)

    def heartbeat(
        self,
        job_id: int,
        *,
        worker: str,
        lease_seconds: float,
        now: float,
        action: str | None = None,
        card: bool = False,
    ) -> bool:
        """Extend the job's lease and the lease of any action claim it holds; with `action` (and
        `card`), held only while those claims are still this job's too."""
        with self._tx() as c:
            held = (
                c.run(
                    "UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE id = ?"
                    " AND state = 'running' AND lease_owner = ?",
                    (now + lease_seconds, now, job_id, worker),
                )
                == 1
            )
            if not held:
                return False
            actions = c.run(
                "UPDATE order_actions SET lease_expires_at = ? WHERE job_id = ? AND owner = ?"  # nosec B608  # constants and ? placeholders only
                " AND state = 'in_flight'" + (" AND action = ?" if action else ""),
                (now + lease_seconds, job_id, worker, *((action,) if action else ())),
            )
            cards = c.run(
                "UPDATE card_claims SET lease_expires_at = ? WHERE job_id = ? AND owner = ? AND state = 'held'",
                (now + lease_seconds, job_id, worker),
            )
            # taken over while this worker was away: renewing the job's own lease changes nothing
            # (the job is given back), and nothing may be sent in the claims' name
            return not ((action and actions != 1) or (card and cards < 1))

    def finish_job(
        self, job_id: int, *, worker: str, decision: DecisionRecord, now: float, action: str | None = None
    ) -> bool:
        with self._tx() as c:
            if not _release_job(c, job_id, worker, JobState.DONE, None, now, now, decision.outcome):
                return False
            _insert_decision(c, job_id, decision, now)
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
            if not _release_job(
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
            if not _release_job(c, job_id, worker, JobState.DEAD, error, now, now, AttemptEnd.DEAD):
                return False
            if decision is not None:
                _insert_decision(c, job_id, decision, now)
            return True

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

    def record_attempt_traces(
        self, job_id: int, attempt: int, *, trace_id: str | None, cl_trace_ids: Sequence[str]
    ) -> None:
        with self._tx() as c:
            c.run(
                "UPDATE attempts SET trace_id = ?, cl_trace_ids = ? WHERE id ="
                " (SELECT MAX(id) FROM attempts WHERE job_id = ? AND number = ?)",
                (trace_id, ",".join(cl_trace_ids) or None, job_id, attempt),
            )

    def job_state(self, job_id: int) -> JobState | None:
        with self._tx(write=False) as c:
            row = c.one("SELECT state FROM jobs WHERE id = ?", (job_id,))
        return JobState(row["state"]) if row else None


def job_from_row(row: Row, *, lease_expires_at: float) -> Job:
    """The job a claim's row describes: the job's columns, its delivery's body, received_at and
    replay_of, its `attempts` counted with this one and this attempt's `number`."""
    return Job(
        id=int(row["id"]),
        delivery_id=int(row["delivery_id"]),
        order_id=row["order_id"],
        topic=row["topic"],
        attempts=int(row["attempts"]),
        body=bytes(row["body"]),
        received_at=float(row["received_at"]),
        lease_expires_at=lease_expires_at,
        replay=row["replay_of"] is not None,
        trace_context=json.loads(row["trace_context"]) if row["trace_context"] else {},
        number=int(row["number"]),
        organization=row["organization"],
    )


def _release_job(
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


def _insert_decision(c: Cursorish, job_id: int, d: DecisionRecord, now: float) -> None:
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
            _market_of_job(c, job_id) if wallet_related else None,
            job_id,
        ),
    )


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
