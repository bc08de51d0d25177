"""The embedded default store: one SQLite file in WAL mode, fsynced on every commit but the claim.

`synchronous=FULL` makes a commit durable before it returns, so a 2xx after `record_delivery`
means the delivery is on disk (only the job claim is not waited for: `_claim_tx`). Writers take
the lock at `BEGIN IMMEDIATE` and wait up to `busy_timeout_ms` for it; a lock held longer, a
full disk or an I/O error becomes StoreUnavailable (the web layer answers 503, which Commerce
Layer retries).
Connections are per thread and re-opened after a fork (gunicorn workers).

Our own writers (gunicorn workers, the job worker) first queue on an flock of `<path>-lock`:
the kernel wakes the next writer as soon as the lock is released, whereas SQLite's busy handler
sleeps 1, 2, 5, 10... ms between tries; with two or more web workers that sleeping cut intake
throughput by a third and put p99 at tens of milliseconds (see BENCHMARKS.md). The busy timeout
still applies to writers outside the service (e.g. the sqlite3 shell).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from webhook_app import wakeup
from webhook_app.errors import StoreUnavailable
from webhook_app.store.base import SCHEMA_VERSION, Pruned, Recorded, Submission
from webhook_app.store.schema import migrations
from webhook_app.store.sql import Cursorish, Row, SQLStore, schema_version_in
from webhook_app.store.sql.dialect import SQLITE

log = logging.getLogger(__name__)

MIGRATIONS = migrations("sqlite")

#: `/readyz` says unavailable below this much free space next to the database (a few 1 MiB bodies)
MIN_FREE_BYTES = 8 * 1024 * 1024


class _Cursor(Cursorish):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        row: Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return self.conn.execute(sql, params).rowcount


class SQLiteStore(SQLStore):
    """Store on a local SQLite file."""

    dialect = SQLITE

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = str(Path(path).expanduser()) if path != ":memory:" else path
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        # After a commit that queued a job, wake a worker on this host (wakeup.py); :memory: is
        # per connection, so nobody else could see the job anyway.
        self._waker = wakeup.Waker(wakeup.socket_path(self.path)) if self.path != ":memory:" else None

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        parent = Path(self.path).parent
        try:
            if self.path != ":memory:":
                parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create the directory {parent} for the SQLite database:"
                f" {_IN_THE_WAY if isinstance(exc, FileExistsError | NotADirectoryError) else exc.strerror};"
                " set WEBHOOK_APP_DATABASE_URL to sqlite:///PATH in a directory this user can write"
            ) from exc
        try:
            if self.path != ":memory:":
                _create_private(self.path)
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=True
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            # Freed pages can be given back to the filesystem after a prune (incremental_vacuum).
            # This takes effect on a new, empty database; an older one needs `db prune --vacuum`.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreUnavailable(f"SQLite could not switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            writer_lock = None if self.path == ":memory:" else _WriterLock(f"{self.path}-lock")
        except sqlite3.Error as exc:
            raise StoreUnavailable(
                f"cannot open the SQLite database {self.path}: {_open_problem(self.path, exc)}"
            ) from exc
        except OSError as exc:  # creating the file 0600 (`_create_private`) or its lock file
            raise StoreUnavailable(
                f"cannot open the SQLite database {self.path}: {_open_problem(self.path, exc)}"
            ) from exc
        self._local.conn = conn
        self._local.pid = os.getpid()
        self._local.writer_lock = writer_lock
        return conn

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[Cursorish]:
        conn = self._connection()
        lock = self._local.writer_lock if write else None
        if lock is None:
            with self._sqlite_tx(conn, write=write) as c:
                yield c
            return
        fcntl.flock(lock.fd, fcntl.LOCK_EX)  # the kernel releases it if this process dies
        try:
            with self._sqlite_tx(conn, write=write) as c:
                yield c
        finally:
            fcntl.flock(lock.fd, fcntl.LOCK_UN)

    @contextmanager
    def _claim_tx(self) -> Iterator[Cursorish]:
        """The job claim, committed without waiting for the disk (`synchronous=NORMAL` for this
        transaction only; WAL mode keeps it atomic and in order). The worker's next commit (the
        action claim before any call to Commerce Layer, or the job's end) is synced, and a WAL
        sync writes out every frame before it, the claim's included. A claim lost to a power cut
        leaves the job due again, as the cut would anyway; a crash of the process loses nothing."""
        conn = self._connection()
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with self._tx() as c:
                yield c
        finally:
            try:
                conn.execute("PRAGMA synchronous = FULL")
            except sqlite3.Error:
                # never leave an unsynced connection behind: the next transaction opens a new one
                self._local.conn = None
                conn.close()

    @contextmanager
    def _sqlite_tx(self, conn: sqlite3.Connection, *, write: bool) -> Iterator[Cursorish]:
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            raise StoreUnavailable(_describe(exc)) from exc
        try:
            yield _Cursor(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise StoreUnavailable(_describe(exc)) from exc
        except BaseException:
            _rollback(conn)
            raise

    def migrate(self) -> int:
        with self._tx() as c:
            c.run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = schema_version_in(c)
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for ddl in MIGRATIONS[version - 1]:
                    c.run(ddl)
            if current < SCHEMA_VERSION:
                c.run("DELETE FROM schema_version")
                c.run("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        return SCHEMA_VERSION

    def check_writable(self) -> None:
        """Room on the filesystem for a few large deliveries, then a committed write. (SQLite
        rewrites its WAL from the start after a checkpoint, so a tiny write can succeed on a full
        disk where a delivery's would not: free space is checked first.)"""
        if self.path != ":memory:":
            try:
                st = os.statvfs(Path(self.path).parent)
            except OSError as exc:
                raise StoreUnavailable(f"cannot check the SQLite filesystem: {exc.strerror}") from exc
            free = st.f_bavail * st.f_frsize
            if free < MIN_FREE_BYTES:
                raise StoreUnavailable(
                    f"SQLite database or disk is full ({free} bytes free, {MIN_FREE_BYTES} needed to accept deliveries)"
                )
        super().check_writable()

    # --- retention: give the space back ---------------------------------------------------
    def prune(
        self, *, bodies_before: float, records_before: float, limit: int, now: float, dry_run: bool = False
    ) -> Pruned:
        done = super().prune(
            bodies_before=bodies_before, records_before=records_before, limit=limit, now=now, dry_run=dry_run
        )
        if not dry_run and (done.bodies or done.deliveries):
            self.reclaim()  # what this batch freed: a few ms, so intake waits no longer
        return done

    def reclaim(self, pages: int = 4000) -> None:
        """Give up to `pages` free pages back to the filesystem. The pragma frees one page per
        step: executescript steps it to the end, in its own transaction."""
        self._locked_script(f"PRAGMA incremental_vacuum({int(pages)});")

    def vacuum(self) -> None:
        """Rewrite the whole file (once, for a database made before incremental vacuum was set)."""
        self._locked_script("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")

    def _locked_script(self, script: str) -> None:
        conn = self._connection()
        lock = self._local.writer_lock
        if lock is not None:
            fcntl.flock(lock.fd, fcntl.LOCK_EX)
        try:
            conn.executescript(script)
        except sqlite3.Error as exc:
            raise StoreUnavailable(_describe(exc)) from exc
        finally:
            if lock is not None:
                fcntl.flock(lock.fd, fcntl.LOCK_UN)

    def auto_vacuum(self) -> str:
        with self._tx(write=False) as c:
            row = c.one("PRAGMA auto_vacuum")
        return {0: "none", 1: "full", 2: "incremental"}.get(int(row["auto_vacuum"]) if row else 0, "none")

    def _database_bytes(self) -> int:
        with self._tx(write=False) as c:
            pages = c.one("PRAGMA page_count")
            size = c.one("PRAGMA page_size")
        return int(pages["page_count"]) * int(size["page_size"]) if pages and size else 0

    def record_deliveries(self, batch: Sequence[Submission]) -> list[Recorded]:
        recorded = super().record_deliveries(batch)
        self._wake(recorded)
        return recorded

    def _wake(self, recorded: Sequence[Recorded]) -> None:
        """One wake-up per commit that queued a job (not one per delivery)."""
        if self._waker is not None and any(r.job_id is not None and not r.duplicate for r in recorded):
            self._waker.notify()

    def wait_for_jobs(self, timeout: float) -> bool:
        if self._waker is None:
            return super().wait_for_jobs(timeout)
        return self._waker.wait(timeout)

    def close(self) -> None:
        if self._waker is not None:
            self._waker.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        lock = getattr(self._local, "writer_lock", None)
        if lock is not None:
            lock.close()
            self._local.writer_lock = None


class _WriterLock:
    """The file our writers flock, one open file description per thread (and per process)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    __del__ = close


def _create_private(path: str) -> None:
    """The database file, created 0600 before SQLite opens it (SQLite gives its `-wal` and
    `-shm` files the database file's mode), in a directory created 0700 if there was none:
    they hold customer e-mails and addresses. A file (or its `-wal`, `-shm`, `-lock`) that
    another user owns is refused: its owner could read the stored bodies and queue jobs. One of
    ours that other users (its group too) could read or write is made 0600, with a log line.

    Another local user must not choose what these names open either: a symlink they planted as
    `-wal` was followed, and the target (any file of this user's, /etc/passwd under root) made
    0600 and opened as the journal. So a directory another user owns, or one every user may write
    in without the sticky bit, is refused; `-wal`, `-shm` and `-lock` are made here (never through
    a symlink) before SQLite looks for them, so that none is left for another user to plant in a
    shared directory such as /tmp; and the database file may be a symlink only of this user's."""
    parent = Path(path).parent
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_directory(parent)
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-lock"):
        _open_private(name, follow=name == path)


def _refuse(what: str, why: str) -> StoreUnavailable:
    return StoreUnavailable(
        f"{what} {why}; remove it, or set WEBHOOK_APP_DATABASE_URL to sqlite:///PATH in a directory only"
        " this user can write"
    )


def _check_directory(parent: Path) -> None:
    st = os.stat(parent)
    if st.st_uid not in (os.geteuid(), 0):
        raise _refuse(
            f"the directory {parent} of the SQLite database",
            f"belongs to another user (uid {st.st_uid}), who could replace its files or plant symlinks there",
        )
    if st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
        raise _refuse(
            f"the directory {parent} of the SQLite database",
            "is one every user may write in (without the sticky bit), who could replace its files",
        )


def _open_private(name: str, *, follow: bool) -> None:
    """Create `name` 0600 if it is not there (never through a symlink unless `follow`, and only
    through one of this user's then), and check its owner and mode on the open file."""
    try:
        link = os.lstat(name)
    except FileNotFoundError:
        link = None
    if link is not None and stat.S_ISLNK(link.st_mode) and (not follow or link.st_uid != os.geteuid()):
        raise _refuse(f"the SQLite file {name}", f"is a symbolic link (made by uid {link.st_uid})")
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(name, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink planted since the look above
            raise _refuse(f"the SQLite file {name}", "is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise StoreUnavailable(
                f"the SQLite file {name} belongs to another user (uid {st.st_uid}, this one is"
                f" {os.geteuid()}): they could read its deliveries and queue jobs; remove it, or set"
                " WEBHOOK_APP_DATABASE_URL to sqlite:///PATH in a directory only this user can write"
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
            log.warning(
                "SQLite file was open to other local users; now it is 0600",
                extra={"file": name, "mode_was": oct(st.st_mode & 0o777)},
            )
    finally:
        os.close(fd)


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # no transaction left to roll back (SQLite rolled it back itself)
        conn.execute("ROLLBACK")


_IN_THE_WAY = "part of that path is a file, not a directory"


def _open_problem(path: str, exc: sqlite3.Error | OSError) -> str:
    """Why a database file could not be opened, and what to change (the path is named by the caller)."""
    p = Path(path)
    fix = "; set WEBHOOK_APP_DATABASE_URL to sqlite:///PATH of a file this user can write"
    if p.is_dir():
        return "it is a directory" + fix
    if not p.exists() and not os.access(p.parent, os.W_OK | os.X_OK):
        return f"its directory {p.parent} is not writable by this user" + fix
    if p.exists() and not os.access(p, os.R_OK | os.W_OK):
        return "the file is not readable and writable by this user" + fix
    return (_describe(exc) if isinstance(exc, sqlite3.Error) else str(exc.strerror)) + fix


def _describe(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return "SQLite database is locked by another writer past the busy timeout"
    if "full" in text:
        return "SQLite database or disk is full"
    if "disk I/O error" in text:
        return f"SQLite could not write ({text}): is the disk full or the file unwritable?"
    return f"SQLite error: {text}"
