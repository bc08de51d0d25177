"""How fast one `webhook-app worker` drains a backlog of jobs (shadow mode: claim, decide, record).

    python bench/drain.py [--backend sqlite|postgres] [--seconds 3] [--repeat 3] [--app-dir DIR]

Each run fills a fresh database through `webhook-app web` (wrk, 4 connections, `--seconds` of
the ingest benchmark's distinct signed 30 KB order bodies), stops it, then starts one worker on
the backlog and waits until no job is pending or running. Reported per run: the jobs, the wall
time, jobs per second and the worker's CPU per job (its start-up included, about 0.4 s of CPU).
With `--app-dir`, the service is imported from another checkout (an A/B of a change to the
claim, say), alternating with this one when `--ab` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bench.common as common  # noqa: E402
from bench import ingest  # noqa: E402
from bench.bodies import BENCH_SECRET, ensure_bodies  # noqa: E402
from bench.cpu import proc_cpu_seconds  # noqa: E402

LIMIT_S = 300.0


def pending(db_url: str) -> int:
    rows = common.db_query(db_url, "SELECT COUNT(*) AS n FROM jobs WHERE state IN ('pending', 'running')")
    return int(rows[0]["n"])


def one_run(kind: str, app_dir: Path, seconds: float, workdir: Path) -> dict[str, float]:
    common.APP_DIR = app_dir
    bodies = ensure_bodies(REPO / "bench-results" / "bodies", "30k", 10_000)
    server = ingest.Server(kind, 4, workdir, f"drain{os.getpid()}")
    server.start()
    try:
        ingest.run_wrk(
            server.url, bodies["file"], ingest.MEASURE_TOPICS, seconds=seconds, connections=4, out=workdir / "fill.json"
        )
        server.proc.stop()  # type: ignore[union-attr]  # started above
        server.proc = None
        assert server.db_url is not None
        jobs = pending(server.db_url)
        env = common.clean_env(
            {
                "CL_WEBHOOK_SECRETS": f"bench:{BENCH_SECRET}",
                "WEBHOOK_APP_DATABASE_URL": server.db_url,
                "WEBHOOK_APP_MODE": "shadow",
                "WEBHOOK_APP_LOG_LEVEL": "WARNING",
            }
        )
        started = time.monotonic()
        worker = common.Proc([common.PY, "-m", "webhook_app", "worker"], env, workdir / "worker.log")
        left = jobs
        while left and time.monotonic() - started < LIMIT_S:
            time.sleep(0.05)
            left = pending(server.db_url)
        wall = time.monotonic() - started
        cpu = proc_cpu_seconds(worker.proc.pid)
        worker.stop()
    finally:
        server.stop()
    if left:
        raise RuntimeError(f"{left} of {jobs} jobs still pending after {LIMIT_S:.0f} s (see {workdir}/worker.log)")
    return {
        "jobs": jobs,
        "seconds": round(wall, 2),
        "jobs_per_s": round(jobs / wall),
        "cpu_us_per_job": round(1e6 * cpu / jobs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds of intake that make the backlog")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--app-dir", type=Path, help="import webhook_app from this checkout")
    p.add_argument("--ab", action="store_true", help="alternate --app-dir with this checkout")
    args = p.parse_args(argv)
    dirs = [args.app_dir.resolve() if args.app_dir else REPO]
    if args.ab and args.app_dir:
        dirs.append(REPO)
    workdir = REPO / "bench-results" / "drain"
    workdir.mkdir(parents=True, exist_ok=True)
    for i in range(args.repeat):
        for app_dir in dirs:
            r = one_run(args.backend, app_dir, args.seconds, workdir)
            print(
                f"run {i + 1} {app_dir}: {r['jobs']} jobs in {r['seconds']} s, {r['jobs_per_s']} jobs/s,"
                f" worker CPU {r['cpu_us_per_job']} us/job",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
