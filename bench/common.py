"""Shared helpers for the benchmark runner: processes, ports, databases, machine facts."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import requests

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_client() -> Any:
    """A client of the peers' Redis (`BENCH_REDIS_URL`); imported here so that only the peers need it."""
    import redis

    return redis.Redis.from_url(REDIS_URL)


REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, *, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with status {proc.returncode} (waiting for {url})")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


#: where the service under test is imported from (`--app-dir` compares another checkout)
APP_DIR = REPO


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The current environment without the service's variables, plus `extra`; the service and
    the bench package are imported from APP_DIR and REPO, never from another installed copy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_", "PYTHON"))}
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(APP_DIR), str(REPO)]))
    env.update(extra)
    return env


def db_upgrade(env: Mapping[str, str]) -> None:
    """`webhook-app db upgrade` with `env` (the service's schema on its database); RuntimeError
    with its error output if it fails."""
    up = subprocess.run(
        [PY, "-m", "webhook_app", "db", "upgrade"],
        env=env,
        cwd=APP_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if up.returncode != 0:
        raise RuntimeError(f"db upgrade failed: {up.stderr.strip()}")


class Proc:
    """A child process in its own session, output to a log file; stopped by its own pid only."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path, *, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=cwd or APP_DIR,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own process group only
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# --- databases -------------------------------------------------------------------------------


def pg_url(dbname: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{dbname}"


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=2):
            return True
    except Exception:  # any failure means "not available"
        return False


def pg_recreate(dbname: str) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    return pg_url(dbname)


def pg_drop(dbname: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def db_query(url: str, sql: str) -> list[dict[str, Any]]:
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql).fetchall()]
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row) as conn:
        return list(conn.execute(sql).fetchall())


# --- machine ---------------------------------------------------------------------------------


def _first(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text, re.M)
    return m.group(1).strip() if m else None


def machine_info() -> dict[str, Any]:
    import flask
    import gunicorn

    cpuinfo = Path("/proc/cpuinfo").read_text()
    meminfo = Path("/proc/meminfo").read_text()
    info: dict[str, Any] = {
        "cpu_model": _first(r"^model name\s*:\s*(.+)$", cpuinfo),
        "cores": os.cpu_count(),
        "ram_gib": round(int(_first(r"^MemTotal:\s*(\d+)", meminfo) or 0) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gunicorn": gunicorn.__version__,
        "flask": flask.__version__,
        "sqlite": sqlite3.sqlite_version,
    }
    try:
        import psycopg

        info["psycopg"] = psycopg.__version__
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=2) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            info["postgresql_settings"] = {
                k: conn.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
                for k in ("fsync", "synchronous_commit", "wal_sync_method")
            }
    except Exception as exc:
        info["postgresql"] = f"unavailable ({type(exc).__name__})"
    info.update(peer_versions())
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        info["wrk"] = _first(r"^(wrk \S+)", out.stdout + out.stderr)
    try:
        pyspy = Path(PY).parent / "py-spy"
        if pyspy.exists():
            info["py_spy"] = subprocess.run(
                [str(pyspy), "--version"], capture_output=True, text=True, check=False
            ).stdout.strip()
    except OSError:
        pass
    return info


def peer_versions() -> dict[str, Any]:
    """Versions of the peers' libraries (bench/requirements.txt) and how the Redis they queue on
    keeps data (appendonly, save), when they are installed and Redis answers."""
    from importlib import metadata

    out: dict[str, Any] = {}
    peers = {}
    for name in ("celery", "redis", "procrastinate"):
        try:
            peers[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if peers:
        out["peers"] = peers
    try:
        r = redis_client()
        info = r.info("server")
        out["redis"] = {
            "version": info.get("redis_version"),
            "appendonly": r.config_get("appendonly").get("appendonly"),
            "save": r.config_get("save").get("save"),
        }
    except Exception:  # no Redis or no client: nothing to record
        pass
    return out


def fsync_probe(directory: Path, *, seconds: float = 2.0, body_bytes: int = 30_842) -> dict[str, Any]:
    """What one durable commit costs on this disk: a raw fdatasync, and a SQLite WAL commit
    (synchronous=FULL, as the service configures it) of one ~30 KB row."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync-probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    raw: list[float] = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fdatasync(fd)
            raw.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    db = directory / "fsync-probe.db"
    commits: list[float] = []
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        blob = os.urandom(body_bytes)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (body) VALUES (?)", (blob,))
            conn.execute("COMMIT")
            commits.append(time.perf_counter() - t)
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)

    def stats(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {
            "n": len(xs),
            "mean_ms": round(statistics.fmean(xs) * 1e3, 3),
            "p50_ms": round(xs[len(xs) // 2] * 1e3, 3),
            "p99_ms": round(xs[int(len(xs) * 0.99)] * 1e3, 3),
            "max_per_second": round(1 / statistics.fmean(xs)),
        }

    return {"directory": str(directory), "fdatasync_4k": stats(raw), "sqlite_wal_full_commit_30k": stats(commits)}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
