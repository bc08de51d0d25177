"""Smoke test of the benchmark's peers: the tasks they queue are real and run.

For each peer (Flask + Celery on Redis, Flask + procrastinate on PostgreSQL) on gunicorn as the
benchmark starts it: N distinct signed 30 KB order bodies posted (each must answer 202), one with
a wrong signature (401, nothing queued), the number of queued messages / jobs checked, then the
peer's own worker started (`celery -A bench.peer_celery:celery_app worker`, `procrastinate
--app=bench.peer_procrastinate.proc_app worker`) and the N tasks waited for (each parses its body;
Celery's count themselves in Redis, procrastinate's end `succeeded`). Exit 0 when every check
holds.

    python bench/peers_smoke.py [--count N]       (make bench-peers-smoke)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from bench import bodies as bodies_mod  # noqa: E402
from bench.common import PY, REDIS_URL, Proc, clean_env, db_query, log, redis_client  # noqa: E402
from bench.ingest import Server  # noqa: E402
from webhook_app.signing import sign  # noqa: E402


def _post(url: str, body: bytes, signature: str) -> int:
    headers = {
        "Content-Type": "application/json",
        "X-CommerceLayer-Topic": "orders.place",
        "X-CommerceLayer-Signature": signature,
    }
    return requests.post(url, data=body, headers=headers, timeout=10).status_code


def smoke(kind: str, count: int, workdir: Path) -> list[str]:
    """Run one peer; return the failed checks (empty: all held)."""
    failures: list[str] = []
    lines = (workdir.parent / "bodies.txt").read_bytes().splitlines()[:count]
    server = Server(kind, 4, workdir, f"smoke_{kind}")
    worker: Proc | None = None
    try:
        server.start()
        codes = [_post(server.url, body, sig.decode()) for sig, body in (line.split(b" ", 1) for line in lines)]
        if codes != [202] * count:
            failures.append(f"{kind}: answers {sorted(set(codes))}, want 202 for each of {count}")
        bad = _post(server.url, lines[0].split(b" ", 1)[1], sign(b"x", secret="wrong"))
        if bad != 401:
            failures.append(f"{kind}: a wrong signature got {bad}, want 401")
        stored = server.stored() or {}
        if stored.get("jobs") != count:
            failures.append(f"{kind}: {stored.get('jobs')} queued, want {count}")
        if kind == "celery":
            assert server.queue is not None
            env = clean_env({"BENCH_CELERY_BROKER": REDIS_URL, "BENCH_CELERY_QUEUE": server.queue})
            argv = [PY, "-m", "celery", "-A", "bench.peer_celery:celery_app", "worker", "--pool", "solo"]
            worker = Proc([*argv, "--loglevel", "info"], env, workdir / "celery-worker.log", cwd=REPO)

            def done() -> int:
                return int(redis_client().get(f"{server.queue}:done") or 0)

        else:
            assert server.db_url is not None
            db_url = server.db_url
            env = clean_env({"BENCH_PROCRASTINATE_DSN": db_url})
            argv = [PY, "-m", "procrastinate", "--app=bench.peer_procrastinate.proc_app", "worker"]
            worker = Proc(argv, env, workdir / "procrastinate-worker.log", cwd=REPO)

            def done() -> int:
                q = "SELECT COUNT(*) AS n FROM procrastinate_jobs WHERE status = 'succeeded'"
                return int(db_query(db_url, q)[0]["n"])

        deadline = time.monotonic() + 60
        while done() < count and time.monotonic() < deadline and worker.proc.poll() is None:
            time.sleep(0.2)
        ran = done()
        if ran != count:
            failures.append(f"{kind}: the worker ran {ran} of {count} tasks (log: {worker.log_path})")
        log(f"{kind}: {count} x 202, wrong signature {bad}, {stored.get('jobs')} queued, {ran} run by its worker")
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
        if kind == "celery":  # the worker's control-queue bookkeeping, in the benchmark's Redis database
            redis_client().delete("_kombu.binding_deadlines")
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=20)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-peers-smoke-") as tmp:
        root = Path(tmp)
        bodies_mod.write_bodies(root / "bodies.txt", "30k", args.count)
        failures = [f for kind in ("celery", "procrastinate") for f in smoke(kind, args.count, root / kind)]
    for f in failures:
        print(f"bench-peers-smoke: {f}", file=sys.stderr)
    print("bench-peers-smoke: " + ("FAILED" if failures else "both peers queue real tasks that their workers run"))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
