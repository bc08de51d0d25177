"""The scale-out store: PostgreSQL through psycopg 3 and a connection pool.

Several web instances and workers share one database. The SQL of the contract lives in
`store/sql/`; here are the connection handling, the schema migrations (`webhook-app db
upgrade`, guarded by an advisory lock so two migrators cannot collide) and a rate limiter shared
by every worker. Jobs are claimed with `FOR UPDATE SKIP LOCKED`. A connection that fails, a pool
that cannot hand out a connection within `pool_timeout`, or a server that is down becomes
StoreUnavailable, so intake answers 503 quickly and recovers by itself when the server returns.
"""

from __future__ import annotations

import json
import os
import re
import select
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from webhook_app.config import RateLimit
from webhook_app.errors import StoreUnavailable
from webhook_app.ratelimit import WINDOW_GUARD_SECONDS, RateLimiter, earliest_slot
from webhook_app.store.base import SCHEMA_VERSION, Recorded, Submission
from webhook_app.store.schema import migrations
from webhook_app.store.sql import (
    INSERT_DELIVERY,
    Cursorish,
    Row,
    SQLStore,
    delivery_values,
    job_order_id,
    schema_version_in,
)
from webhook_app.store.sql.dialect import POSTGRES
from webhook_app.store.sql.postgres_claim import PostgresJobClaim

MIGRATIONS = migrations("postgres")

# Each entry upgrades the schema from version N-1 to N (index 0 is version 1).
_MIGRATION_LOCK = 0x77686B61  # "whka": one migrator at a time
_CLAIM_LOCKS = 0x77686B63  # "whkc": the advisory locks of card claims (two-key form)
JOBS_CHANNEL = "webhook_app_jobs"  # NOTIFY after an insert that queued a job; workers LISTEN


class _Cursor(Cursorish):
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self.cur = cur

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        self.cur.execute(_pg(sql), params)
        return self.cur.fetchone() if self.cur.description else None

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        self.cur.execute(_pg(sql), params)
        return list(self.cur.fetchall())

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        self.cur.execute(_pg(sql), params)
        return self.cur.rowcount


_converted: dict[str, str] = {}


def _pg(sql: str) -> str:
    """`?` placeholders (shared SQL) to psycopg's `%s`; cached."""
    out = _converted.get(sql)
    if out is None:
        out = _converted[sql] = sql.replace("%", "%%").replace("?", "%s")
    return out


class PostgresStore(PostgresJobClaim, SQLStore):
    """Store on PostgreSQL. Connections are opened lazily, per process (after gunicorn forks)."""

    dialect = POSTGRES

    def __init__(self, url: str, *, pool_size: int = 4, pool_timeout: float = 2.0, connect_timeout: int = 2) -> None:
        self.url = url
        self.pool_size = pool_size
        self.pool_timeout = pool_timeout
        self.connect_timeout = connect_timeout
        self._pool: ConnectionPool | None = None
        self._pool_pid: int | None = None
        self._lock = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        self._listener_pid: int | None = None

    def _get_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                # One plain connection first: a wrong URL, database or role is then one clear
                # StoreUnavailable (connect_problem), instead of a pool that retries it in the
                # background with a warning each time and ends in "no connection within the timeout".
                try:
                    psycopg.connect(self.url, connect_timeout=self.connect_timeout).close()
                except psycopg.Error as exc:
                    raise StoreUnavailable(connect_problem(self.url, exc, timeout=self.connect_timeout)) from exc
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=self.pool_timeout,
                    open=False,
                    kwargs={"row_factory": dict_row, "connect_timeout": self.connect_timeout, "autocommit": True},
                    name="webhook-app",
                    reconnect_timeout=0,
                )
                self._pool.open(wait=False)
                self._pool_pid = os.getpid()
            return self._pool

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[Cursorish]:
        with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            yield _Cursor(cur)

    @contextmanager
    def _statement(self) -> Iterator[Cursorish]:
        """One statement in autocommit mode: atomic by itself, without BEGIN/COMMIT round trips."""
        with self._connect() as conn, conn.cursor() as cur:
            yield _Cursor(cur)

    @contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; a broken one is dropped by the pool when it comes back. Failures
        become StoreUnavailable (a connection that died under us costs one 503, then the pool
        opens a fresh one)."""
        try:
            pool = self._get_pool()
            conn = _live_connection(pool, self.pool_timeout)
            try:
                with conn:
                    yield conn
            finally:
                pool.putconn(conn)
        except PoolTimeout as exc:
            raise StoreUnavailable("PostgreSQL is unreachable (no connection within the pool timeout)") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # server down or restarting, connection lost mid-transaction (the commit may or may
            # not have happened: the caller answers 503 and Commerce Layer's retry is deduplicated)
            raise StoreUnavailable(f"PostgreSQL connection failed: {_first_line(exc)}") from exc
        except psycopg.errors.DiskFull as exc:  # pragma: no cover - hard to provoke
            raise StoreUnavailable("PostgreSQL disk is full") from exc

    # --- intake: one round trip -----------------------------------------------------------
    def record_deliveries(self, batch: Sequence[Submission]) -> list[Recorded]:
        """The whole batch in one transaction (one commit record, one WAL flush), then one
        notification for the workers. One delivery is one statement in autocommit (atomic and
        durable on return, without BEGIN and COMMIT round trips)."""
        if not batch:
            return []
        if len(batch) == 1:
            with self._statement() as c:
                recorded = [self._insert_delivery(c, batch[0])]
                if recorded[0].job_id is not None and not recorded[0].duplicate:
                    self._notify_job(c)
            return recorded
        with self._connect() as conn:
            with conn.transaction(), conn.cursor() as cur:
                c = _Cursor(cur)
                recorded = [self._insert_delivery(c, s) for s in batch]
            if any(r.job_id is not None and not r.duplicate for r in recorded):
                with conn.cursor() as cur:
                    self._notify_job(_Cursor(cur))
        return recorded

    def _insert_delivery(self, c: Cursorish, s: Submission) -> Recorded:
        """The delivery and its job in one statement; for a duplicate, the stored one's ids."""
        delivery, now = s.delivery, s.now
        status = "queued" if delivery.queued else "ignored"
        row = c.one(
            f"WITH d AS ({INSERT_DELIVERY} RETURNING id, order_id, topic, organization),"  # nosec B608  # constants and ? placeholders only
            " j AS (INSERT INTO jobs (delivery_id, order_id, topic, state, attempts, next_attempt_at, created_at,"
            " updated_at, trace_context, organization) SELECT id, ?, topic, 'pending', 0, ?, ?, ?, ?, organization"
            " FROM d WHERE ?"
            " RETURNING id)"
            " SELECT d.id AS delivery_id, (SELECT id FROM j) AS job_id FROM d",
            (
                *delivery_values(s, status),
                job_order_id(delivery),
                now,
                now,
                now,
                json.dumps(dict(s.trace_context)) if s.trace_context else None,
                delivery.queued,
            ),
        )
        if row is None:
            return self._stored_duplicate(c, delivery.identity)
        job_id = row["job_id"]
        return Recorded(int(row["delivery_id"]), False, None if job_id is None else int(job_id), status)

    def _serialize(self, c: Cursorish, key: str) -> None:
        """A transaction-scoped advisory lock on `key` (its CRC-32 under this store's class id)."""
        c.run("SELECT pg_advisory_xact_lock(?, ?)", (_CLAIM_LOCKS, _int4(zlib.crc32(key.encode("utf-8")))))

    # --- schema ---------------------------------------------------------------------------
    def migrate(self) -> int:
        with self._tx() as c:
            c.run("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            c.run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = schema_version_in(c)
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for ddl in MIGRATIONS[version - 1]:
                    c.run(ddl)
                c.run("INSERT INTO schema_version (version) VALUES (?)", (version,))
        return SCHEMA_VERSION

    def reclaim(self) -> None:
        """Plain VACUUM (no table lock; reads and writes go on) of the tables a prune shrinks, so
        new rows reuse the freed space at once instead of when autovacuum next comes round."""
        with self._statement() as c:
            c.run("VACUUM deliveries, jobs, attempts, decisions")

    def _database_bytes(self) -> int:
        """This service's tables (with their indexes and TOAST) in the current schema. Space freed
        by a prune is reused by new rows once autovacuum has seen it; it is not given back to the
        filesystem (that needs VACUUM FULL, which locks the table)."""
        with self._tx(write=False) as c:
            row = c.one(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS n FROM pg_class c"
                " JOIN pg_namespace ns ON ns.oid = c.relnamespace"
                " WHERE ns.nspname = current_schema() AND c.relkind = 'r'"
            )
        return int(row["n"]) if row else 0

    # --- waking the workers ----------------------------------------------------------------
    def _notify_job(self, c: Cursorish) -> None:
        """Wake listening workers: after the insert's commit, in a transaction of its own.

        Not a trigger on `jobs`: a transaction that notifies takes a database-wide lock in its
        pre-commit and holds it until its commit record is flushed, so every notifying insert
        would wait for the previous one's fsync and concurrent commits could no longer share a
        WAL flush. Best effort: the delivery is already committed, and a worker that misses the
        notification finds the job at its next poll."""
        with suppress(psycopg.Error):
            c.run("SELECT pg_notify(?, '')", (JOBS_CHANNEL,))

    def wait_for_jobs(self, timeout: float) -> bool:
        """LISTEN on a connection of this process's own; True when a notification came."""
        try:
            conn = self._listening()
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except psycopg.Error:
            self._close_listener()
            time.sleep(timeout)  # the server is away: poll (claim_job reports the outage)
            return False

    def _listening(self) -> psycopg.Connection[Any]:
        if self._listener is None or self._listener_pid != os.getpid() or self._listener.closed:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout)
            conn.execute(f"LISTEN {JOBS_CHANNEL}")
            self._listener, self._listener_pid = conn, os.getpid()
        return self._listener

    def _close_listener(self) -> None:
        if self._listener is not None and self._listener_pid == os.getpid():
            with suppress(psycopg.Error):  # closing a broken connection
                self._listener.close()
        self._listener = None

    def close(self) -> None:
        self._close_listener()
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    # --- shared rate limit ----------------------------------------------------------------
    def rate_limiter(self, limits: Sequence[RateLimit], *, clock: Callable[[], float] = time.time) -> RateLimiter:
        return PostgresRateLimiter(self._tx, limits, clock=clock)


class PostgresRateLimiter:
    """Sliding windows kept in PostgreSQL, so every worker together stays under Commerce Layer's
    limits (they count per organization and IP, not per process). Each reservation is one short
    transaction serialised by an advisory lock on the key."""

    def __init__(
        self,
        transaction: Callable[[], AbstractContextManager[Cursorish]],
        limits: Sequence[RateLimit],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`transaction`: opens one transaction on the database (the store's own, nothing else of it)."""
        self.transaction = transaction
        self.limits = tuple(limits)
        self.clock = clock
        self.horizon = max((lim.seconds for lim in self.limits), default=0.0) + WINDOW_GUARD_SECONDS

    #: One budget for the whole integration, every organization and worker process
    #: (docs/howto/agency.md, *How the shared budget works*); a 429's hold is one row under HOLD.
    BUCKET = "commercelayer"
    HOLD = "commercelayer:hold"

    def hold(self, until: float) -> None:
        if not self.limits:
            return
        until = min(until, self.clock() + self.horizon)  # no longer than the windows alone could
        with self.transaction() as c:
            c.run("SELECT pg_advisory_xact_lock(?)", (zlib.crc32(self.BUCKET.encode()),))
            c.run("DELETE FROM rate_limit_slots WHERE key = ? AND at < ?", (self.HOLD, until))
            if c.one("SELECT 1 AS x FROM rate_limit_slots WHERE key = ?", (self.HOLD,)) is None:
                c.run("INSERT INTO rate_limit_slots (key, at) VALUES (?, ?)", (self.HOLD, until))

    def reserve(self) -> float:
        if not self.limits:
            return 0.0
        bucket = self.BUCKET
        with self.transaction() as c:
            c.run("SELECT pg_advisory_xact_lock(?)", (zlib.crc32(bucket.encode()),))
            now = self.clock()
            held = c.one("SELECT max(at) AS at FROM rate_limit_slots WHERE key = ?", (self.HOLD,))
            if held is not None and held["at"] is not None:
                now = max(now, float(held["at"]))
            c.run("DELETE FROM rate_limit_slots WHERE key = ? AND at <= ?", (bucket, now - self.horizon))
            history = [
                float(r["at"]) for r in c.all("SELECT at FROM rate_limit_slots WHERE key = ? ORDER BY at", (bucket,))
            ]
            slot = earliest_slot(now, history, self.limits)
            c.run("INSERT INTO rate_limit_slots (key, at) VALUES (?, ?)", (bucket, slot))
        return slot


def _int4(n: int) -> int:
    """An unsigned 32-bit value as PostgreSQL's signed `int4`."""
    return n - (1 << 32) if n >= (1 << 31) else n


def _live_connection(pool: ConnectionPool, timeout: float) -> psycopg.Connection[Any]:
    """A connection from the pool that the server has not dropped.

    An idle connection has nothing to read unless the server closed it (pg_terminate_backend, a
    restart, idle_session_timeout: it sends its FATAL message, then EOF). Such a connection is
    closed and handed back, so the pool opens a fresh one in its place, and the next one is
    tried: after backends were terminated, the first requests get live connections instead of
    503s. The test costs a poll(2), not a round trip."""
    deadline = time.monotonic() + timeout
    while True:
        conn = pool.getconn(timeout=max(0.01, deadline - time.monotonic()))
        if not _dropped(conn):
            return conn
        conn.close()
        pool.putconn(conn)


def _dropped(conn: psycopg.Connection[Any]) -> bool:
    if conn.closed or conn.broken:
        return True
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def connect_problem(url: str, exc: psycopg.Error, *, timeout: float) -> str:
    """One line for a failed connection: what the server (or the network) said, where, and what
    to change. Never the URL itself (it may hold a password)."""
    info = _conninfo(url)
    where = f"{info.get('host') or 'the local socket'}" + (f":{info['port']}" if info.get("port") else "")
    text = " ".join(str(exc).split())
    fix = "WEBHOOK_APP_DATABASE_URL"
    if m := re.search(r'database "([^"]+)" does not exist', text):
        return (
            f'database "{m.group(1)}" does not exist on PostgreSQL at {where}: create it'
            f" (createdb {m.group(1)}) or fix the database name in {fix}"
        )
    if m := re.search(r'role "([^"]+)" does not exist', text):
        return (
            f'role "{m.group(1)}" does not exist on PostgreSQL at {where}: create it'
            f" (CREATE ROLE ... LOGIN) or fix the user name in {fix}"
        )
    if m := re.search(r'password authentication failed for user "([^"]+)"', text):
        return f'PostgreSQL at {where} refused the password of user "{m.group(1)}": fix the password in {fix}'
    if "no password supplied" in text:
        return f"PostgreSQL at {where} asks for a password: add it to {fix}"
    if "no pg_hba.conf entry" in text:
        return f"PostgreSQL at {where} does not accept this client (no pg_hba.conf entry): allow it there, or fix {fix}"
    if "Connection refused" in text:
        return f"PostgreSQL at {where} refused the connection: is it running there? (host and port from {fix})"
    if m := re.search(r"failed to resolve host '([^']*)'|could not translate host name \"([^\"]*)\"", text):
        return f'unknown host "{m.group(1) or m.group(2)}": fix the host in {fix}'
    if "timeout expired" in text:
        return f"no answer from PostgreSQL at {where} within {timeout:g} s: check the host and port in {fix}"
    if isinstance(exc, psycopg.ProgrammingError):  # the URL itself: an unknown parameter, a bad value
        return f"{fix} is not a usable PostgreSQL URL: {_first_line(exc)}"
    detail = text.split("FATAL:", 1)[-1].strip() if "FATAL:" in text else _first_line(exc)
    return f"cannot connect to PostgreSQL at {where}: {detail[:200]}"


def _conninfo(url: str) -> dict[str, Any]:
    try:
        return dict(conninfo_to_dict(url))
    except psycopg.Error:
        return {}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
