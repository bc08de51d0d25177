"""PostgreSQL's job claim: one statement (data-modifying CTEs), its commit not waited for.

The shared claim (`queue.py`) first looks without the write lock (an idle SQLite poll must not
block intake), then reads the organizations' turns, picks, and updates in half a dozen
statements. On PostgreSQL a claim that finds nothing changes nothing, so the look is skipped
and everything is one statement: pick the due job (round the organizations in agency mode, the
one whose last turn is oldest first, `FOR UPDATE SKIP LOCKED`), close an expired holder's
attempt, lease the job, record the organization's turn and the new attempt, and read the job
with its delivery.

Its commit is not waited for (`SET LOCAL synchronous_commit TO off`, this transaction only):
nothing leaves the worker on the strength of a claim before the worker's next commit (the
action claim, or the job's end), which is synced and so makes the claim durable with it. A
claim lost in a crash leaves the job due again, as the crash would anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

from webhook_app.store.base import Job
from webhook_app.store.sql.cursor import SQLBase
from webhook_app.store.sql.queue import DUE, job_from_row

#: the due job, oldest first (params: now, now)
_PICK_ANY = (
    f"WITH pick AS (SELECT id, state, organization FROM jobs WHERE {DUE}"  # nosec B608  # constants only
    " ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED),"
)
#: the due job of the organization whose turn is oldest among those with one (params: the
#: organizations, now, now); the nested loop stops at the first organization that has one
_PICK_AMONG = (
    "WITH pick AS (SELECT j.id, j.state, j.organization FROM"
    " (SELECT o.org, COALESCE(t.turn, 0) AS turn FROM unnest(?::text[]) AS o(org)"
    " LEFT JOIN org_turns t ON t.organization = o.org ORDER BY 2, 1) AS o"
    " CROSS JOIN LATERAL (SELECT id, state, organization FROM jobs"  # nosec B608  # constants only
    f" WHERE organization = o.org AND {DUE} ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) AS j"
    " LIMIT 1),"
    " turn AS (INSERT INTO org_turns (organization, turn)"
    " SELECT organization, (SELECT COALESCE(MAX(turn), 0) + 1 FROM org_turns) FROM pick"
    " ON CONFLICT (organization) DO UPDATE SET turn = excluded.turn),"
)
#: the rest (params: now; worker, lease expiry, now; worker, now)
_TAKE = (
    " expired AS (UPDATE attempts SET finished_at = ?, outcome = 'lease_expired' FROM pick"
    " WHERE attempts.job_id = pick.id AND pick.state = 'running' AND attempts.finished_at IS NULL),"
    " taken AS (UPDATE jobs SET state = 'running', lease_owner = ?, lease_expires_at = ?,"
    " attempts = jobs.attempts + 1, updated_at = ? FROM pick WHERE jobs.id = pick.id"
    " RETURNING jobs.id, jobs.delivery_id, jobs.order_id, jobs.topic, jobs.attempts, jobs.trace_context,"
    " jobs.organization),"
    " numbered AS (INSERT INTO attempts (job_id, number, worker, started_at)"
    " SELECT pick.id, COALESCE((SELECT MAX(a.number) FROM attempts a WHERE a.job_id = pick.id), 0) + 1, ?, ?"
    " FROM pick RETURNING number)"
    " SELECT t.*, d.body, d.received_at, d.replay_of, (SELECT number FROM numbered) AS number"
    " FROM taken t JOIN deliveries d ON d.id = t.delivery_id"
)
CLAIM_ANY = _PICK_ANY + _TAKE
CLAIM_AMONG = _PICK_AMONG + _TAKE


class PostgresJobClaim(SQLBase):
    """`claim_job` in one statement, for `PostgresStore` (before `SQLStore` in its bases)."""

    def claim_job(
        self, *, worker: str, lease_seconds: float, now: float, organizations: Sequence[str] | None = None
    ) -> Job | None:
        if organizations is not None and not organizations:
            return None
        lease = now + lease_seconds
        sql, pick = (CLAIM_ANY, (now, now)) if organizations is None else (CLAIM_AMONG, (list(organizations), now, now))
        with self._tx() as c:
            c.run("SET LOCAL synchronous_commit TO off")
            row = c.one(sql, (*pick, now, worker, lease, now, worker, now))
        return None if row is None else job_from_row(row, lease_expires_at=lease)
