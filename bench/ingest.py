"""The ingest benchmark: wrk against webhook-app, the baseline and the peers, side by side.

For each configuration (body size, gunicorn workers) and each server (the stateless baseline;
the peers users would build instead, Flask + Celery on Redis and Flask + procrastinate on
PostgreSQL; ours: `webhook-app serve` on SQLite, `webhook-app web` on SQLite and on PostgreSQL):
a fresh database (or Redis queue), the server started, a warm-up with one topic, then the
measured wrk run with the other topics (so no delivery of the measured run repeats one of the
warm-up), the RSS of the gunicorn master and each worker sampled throughout, the server stopped,
and, for every receiver that keeps something, the number of stored deliveries (queued messages,
jobs) compared with the number of 2xx answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import bodies as bodies_mod
from bench.common import (
    PY,
    REDIS_URL,
    REPO,
    Proc,
    clean_env,
    db_query,
    db_upgrade,
    free_port,
    log,
    pg_drop,
    pg_recreate,
    redis_client,
    wait_http,
)
from bench.cpu import CpuMonitor, wait_for_quiet
from bench.rss import RssSampler, summarize

LUA = REPO / "bench" / "ingest.lua"
WARMUP_TOPIC = "orders.create"
MEASURE_TOPICS = [
    "orders.place",
    "orders.approve",
    "orders.pay",
    "orders.start_fulfilling",
    "orders.fulfill",
    "orders.cancel",
    "orders.refund",
    "orders.authorize",
]
SECRET = bodies_mod.BENCH_SECRET
#: webhook-app's receivers; `serve-sqlite` is `webhook-app serve` (front, web and a job worker)
OURS = ("serve-sqlite", "sqlite", "postgres")
#: the receivers users would pick instead, each on PEER_WORKERS gunicorn sync workers
PEERS = ("celery", "procrastinate")
PEER_WORKERS = 4
#: the Redis the Celery peer queues on (a database of its own; only its own keys are touched)


@dataclass(frozen=True)
class Config:
    name: str
    size: str
    workers: int
    count: int  # distinct bodies
    conns: int = 0  # wrk connections; 0: two per gunicorn worker (one in hand, one waiting)
    #: webhook-app's worker count; None: its own default (`webhook-app web` as deployed), while the
    #: baseline keeps `workers`
    ours_workers: int | None = None

    @property
    def connections(self) -> int:
        return self.conns or 2 * self.workers

    @property
    def wrk_threads(self) -> int:
        return 2 if self.connections >= 16 else 1  # the wrk -t2 -c32


def gunicorn_flags(workers: int, name: str = "bench-baseline") -> list[str]:
    """The baseline's (and the peers') gunicorn command line, built from webhook_app's own
    gunicorn defaults, but with sync workers: the smallest receiver, the one the targets were set
    against (it has nothing to wait for, so threads would only add overhead; keep-alive is off in
    both)."""
    from webhook_app.runtime import GUNICORN_DEFAULTS as d

    return [
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--timeout",
        str(d["timeout"]),
        "--graceful-timeout",
        str(d["graceful_timeout"]),
        "--keep-alive",
        str(d["keepalive"]),
        "--limit-request-line",
        str(d["limit_request_line"]),
        "--limit-request-fields",
        str(d["limit_request_fields"]),
        "--limit-request-field_size",
        str(d["limit_request_field_size"]),
        "--log-level",
        d["loglevel"],
        "--error-logfile",
        "-",
        "--name",
        name,
    ]


def celery_keys(queue: str) -> list[str]:
    """The Redis keys a Celery queue leaves behind (the list and kombu's bindings)."""
    return [queue, f"{queue}:done", f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]


class Server:
    """One receiver under test: `baseline`, `baseline-sqlite` (the durable hand-written reference),
    the peers `celery` and `procrastinate`, or ours: `serve-sqlite` (`webhook-app serve`), `sqlite`
    and `postgres` (`webhook-app web`)."""

    def __init__(self, kind: str, workers: int, workdir: Path, run_id: str, ours_workers: int | None = None) -> None:
        self.kind = kind
        self.workers = workers
        self.ours_workers = ours_workers
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/webhooks/commercelayer"
        self.db_url: str | None = None
        self.pg_db: str | None = None
        self.run_id = run_id
        self.proc: Proc | None = None
        self.queue: str | None = None  # the Celery peer's Redis list
        # serve's operator routes (/readyz, /metrics): a port of their own (its default, the
        # public port + 1, may be taken on a busy machine)
        self.operator_url = (
            f"http://127.0.0.1:{free_port()}" if kind == "serve-sqlite" else self.url.rsplit("/webhooks", 1)[0]
        )

    def start(self) -> None:
        bind = f"127.0.0.1:{self.port}"
        log_path = self.workdir / f"{self.kind}.log"
        if self.kind.startswith("baseline"):
            env = clean_env({"BENCH_SECRET": SECRET})
            if self.kind == "baseline-sqlite":
                db = self.workdir / "baseline.db"
                for suffix in ("", "-wal", "-shm"):
                    Path(str(db) + suffix).unlink(missing_ok=True)
                env["BENCH_DURABLE_DB"] = str(db)
                self.db_url = f"sqlite:///{db}"
            argv = [
                PY,
                "-m",
                "gunicorn",
                "--bind",
                bind,
                *gunicorn_flags(self.workers),
                "bench.baseline_app:create_app()",
            ]
            self.proc = Proc(argv, env, log_path)
            wait_http(f"http://{bind}/healthz", proc=self.proc.proc)
            return
        if self.kind in PEERS:
            self._start_peer(bind, log_path)
            return
        if self.kind in ("sqlite", "serve-sqlite"):
            db = self.workdir / "webhook-app.db"
            for suffix in ("", "-wal", "-shm"):
                Path(str(db) + suffix).unlink(missing_ok=True)
            self.db_url = f"sqlite:///{db}"
        else:
            self.pg_db = f"bench_{self.run_id}"
            self.db_url = pg_recreate(self.pg_db)
        env = clean_env(
            {
                "CL_WEBHOOK_SECRETS": f"bench:{SECRET}",
                "WEBHOOK_APP_DATABASE_URL": self.db_url,
                "WEBHOOK_APP_MODE": "shadow",
            }
        )
        if self.kind == "postgres":
            db_upgrade(env)
        command = "serve" if self.kind == "serve-sqlite" else "web"
        if command == "serve":
            env["WEBHOOK_APP_OPERATOR_BIND"] = self.operator_url.removeprefix("http://")
        argv = [PY, "-m", "webhook_app", command, "--bind", bind]
        if self.ours_workers is not None:
            argv += ["--workers", str(self.ours_workers)]
        self.proc = Proc(argv, env, log_path)
        wait_http(f"{self.operator_url}/readyz", proc=self.proc.proc)

    def _start_peer(self, bind: str, log_path: Path) -> None:
        env = clean_env({"BENCH_SECRET": SECRET})
        if self.kind == "celery":
            self.queue = f"bench-peer-{self.run_id}-{os.getpid()}"
            redis_client().delete(*celery_keys(self.queue))
            env.update({"BENCH_CELERY_BROKER": REDIS_URL, "BENCH_CELERY_QUEUE": self.queue})
            target = "bench.peer_celery:create_app()"
        else:
            self.pg_db = f"bench_{self.run_id}"
            self.db_url = pg_recreate(self.pg_db)
            env["BENCH_PROCRASTINATE_DSN"] = self.db_url
            schema = subprocess.run(
                [PY, "-m", "procrastinate", "--app=bench.peer_procrastinate.proc_app", "schema", "--apply"],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if schema.returncode != 0:
                raise RuntimeError(f"procrastinate schema --apply failed: {schema.stderr.strip()[-500:]}")
            target = "bench.peer_procrastinate:create_app()"
        argv = [PY, "-m", "gunicorn", "--bind", bind, *gunicorn_flags(PEER_WORKERS, f"bench-{self.kind}"), target]
        self.proc = Proc(argv, env, log_path, cwd=REPO)
        wait_http(f"http://{bind}/healthz", proc=self.proc.proc)

    def stored(self) -> dict[str, int] | None:
        if self.kind == "celery" and self.queue:
            n = int(redis_client().llen(self.queue))
            return {"deliveries": n, "jobs": n}
        if self.db_url is None:
            return None
        if self.kind == "procrastinate":
            n = db_query(self.db_url, "SELECT COUNT(*) AS n FROM procrastinate_jobs")[0]["n"]
            return {"deliveries": int(n), "jobs": int(n)}
        if self.kind == "baseline-sqlite":
            n = db_query(self.db_url, "SELECT COUNT(*) AS n FROM deliveries")[0]["n"]
            return {"deliveries": int(n), "jobs": int(n)}
        row = db_query(
            self.db_url, "SELECT (SELECT COUNT(*) FROM deliveries) AS deliveries, (SELECT COUNT(*) FROM jobs) AS jobs"
        )[0]
        return {k: int(v) for k, v in row.items()}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        if self.pg_db:
            pg_drop(self.pg_db)
        if self.queue:
            redis_client().delete(*celery_keys(self.queue))


def run_wrk(
    url: str,
    bodies_file: str,
    topics: list[str],
    *,
    seconds: float,
    connections: int,
    out: Path,
    threads: int = 1,
    timeout_s: int = 10,
    hosts: list[str] | None = None,
) -> dict[str, Any]:
    """One wrk run of bench/ingest.lua. `hosts` ("127.0.0.1:PORT", ...): spread wrk's threads over
    these servers, thread k to hosts[k % len(hosts)] (`threads` should be a multiple of them)."""
    env = {"WRK_RESULT_FILE": str(out), "PATH": "/usr/bin:/bin"}
    if hosts:
        env["WRK_HOSTS"] = ",".join(hosts)
    argv = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        f"{timeout_s}s",
        "-s",
        str(LUA),
        url,
        "--",
        bodies_file,
        ",".join(topics),
        str(threads),
    ]
    out.unlink(missing_ok=True)
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False)
    if res.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stderr.strip()[:500]}")
    data: dict[str, Any] = json.loads(out.read_text())
    data["stdout"] = res.stdout
    return data


def summarize_wrk(w: dict[str, Any]) -> dict[str, Any]:
    seconds = w["duration_us"] / 1e6
    statuses = {k: int(v) for k, v in w["statuses"].items()}
    ok = sum(n for code, n in statuses.items() if code.startswith("2"))
    non2xx = sum(n for code, n in statuses.items() if not code.startswith("2"))
    socket_errors = sum(w["errors"][k] for k in ("connect", "read", "write", "timeout"))
    pct = w["latency_us"]["percentiles"]
    return {
        "seconds": round(seconds, 2),
        "requests": w["requests"],
        "rps": round(w["requests"] / seconds, 1),
        "p50_ms": round(pct["50"] / 1000, 2),
        "p90_ms": round(pct["90"] / 1000, 2),
        "p99_ms": round(pct["99"] / 1000, 2),
        "p999_ms": round(pct["99.9"] / 1000, 2),
        "max_ms": round(w["latency_us"]["max"] / 1000, 2),
        "mean_ms": round(w["latency_us"]["mean"] / 1000, 2),
        "statuses": statuses,
        "ok_2xx": ok,
        "non_2xx": non2xx,
        "socket_errors": socket_errors,
        "socket_error_detail": w["errors"],
        "errors": non2xx + socket_errors,
        "wrapped": w["wrapped"],
    }


def commit_batches(base_url: str) -> dict[str, float] | None:
    """The group-commit writer's batches over the whole run (warm-up included), from /metrics."""
    import re

    import requests

    try:
        text = requests.get(base_url + "/metrics", timeout=10).text
    except requests.RequestException:
        return None
    found = {k: float(v) for k, v in re.findall(r"^webhook_app_commit_batch_size_(sum|count) ([0-9.e+]+)$", text, re.M)}
    n, total = found.get("count", 0.0), found.get("sum", 0.0)
    return {"batches": n, "deliveries": total, "mean": round(total / n, 2) if n else 0.0}


def profile_pids(pids: list[int], seconds: float, out_dir: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy on each worker for the measured run (non-blocking sampling, raw collapsed stacks)."""
    pyspy = Path(PY).parent / "py-spy"
    if not pyspy.exists():
        pyspy = Path(shutil.which("py-spy") or "py-spy")
    procs = []
    for pid in pids:
        out = out_dir / f"py-spy-{pid}.txt"
        procs.append(
            subprocess.Popen(
                [
                    str(pyspy),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


def run_one(
    cfg: Config,
    kind: str,
    bodies: dict[str, Any],
    *,
    warmup: float,
    seconds: float,
    workdir: Path,
    run_id: str,
    profile: bool = False,
    quiet_wait: float = 60.0,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    server = Server(kind, cfg.workers, workdir, run_id, ours_workers=cfg.ours_workers)
    log(f"ingest {cfg.name} {kind}: {cfg.size} bodies, {cfg.workers} workers, {cfg.connections} connections")
    result: dict[str, Any] = {
        "config": cfg.name,
        "server": kind,
        "size": cfg.size,
        "workers": cfg.workers,
        "connections": cfg.connections,
        "body_bytes": bodies["mean_bytes"],
        "distinct_bodies": bodies["count"],
        "warmup_s": warmup,
        "duration_s": seconds,
    }
    result["quiet_gate"] = wait_for_quiet(max_wait_s=quiet_wait)
    try:
        server.start()
        assert server.proc is not None
        sampler = RssSampler(server.proc.pid).start()
        time.sleep(0.3)
        warm = run_wrk(
            server.url,
            bodies["file"],
            [WARMUP_TOPIC],
            seconds=warmup,
            connections=cfg.connections,
            threads=cfg.wrk_threads,
            out=workdir / "wrk-warmup.json",
        )
        spies = profile_pids(sampler.worker_pids(), seconds, workdir) if profile else []
        tree = [server.proc.pid, *sampler.worker_pids()]
        cpu = CpuMonitor().start(tree)
        measured = run_wrk(
            server.url,
            bodies["file"],
            MEASURE_TOPICS,
            seconds=seconds,
            connections=cfg.connections,
            threads=cfg.wrk_threads,
            out=workdir / "wrk.json",
        )
        result["cpu"] = cpu.stop(tree)
        for p in spies:
            p.wait(timeout=60)
        rss = sampler.stop()
        result["warmup"] = summarize_wrk(warm)
        result.update(summarize_wrk(measured))
        result["rss"] = summarize(rss)
        result["rss_processes"] = rss
        if kind in OURS:
            result["commit_batches"] = commit_batches(server.operator_url)
        stored = server.stored()
        if stored is not None:
            code = "200" if kind == "baseline-sqlite" else "202"
            accepted = warm["statuses"].get(code, 0) + measured["statuses"].get(code, 0)
            result["stored_against"] = code
            result["stored"] = stored
            result["accepted_202"] = accepted
            # a request in flight when wrk stops is stored but its answer is not counted
            in_flight = 2 * cfg.connections
            result["all_acknowledged_stored"] = (
                stored["deliveries"] == stored["jobs"] and accepted <= stored["deliveries"] <= accepted + in_flight
            )
        if profile:
            result["profile_files"] = sorted(str(p) for p in workdir.glob("py-spy-*.txt"))
    finally:
        server.stop()
    log(
        f"  -> {result.get('rps')} req/s, p50 {result.get('p50_ms')} ms, p99 {result.get('p99_ms')} ms, "
        f"errors {result.get('errors')}, max RSS {result.get('rss', {}).get('max_mb')} MB, "
        f"other load {result.get('cpu', {}).get('foreign_cpu_pct')}% of the machine"
    )
    return result
