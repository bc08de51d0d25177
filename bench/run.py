"""Run the webhook-app benchmarks with one command and write the results.

    python bench/run.py [--quick] [--only ingest|e2e|scaleout] [--backend sqlite|postgres|both]
                        [--no-peers] [--profile] [--rounds N] [--seconds S] [--no-doc]
                        [--app-dir DIR] [--instances 1,2,4]

Ingest: wrk against the stateless baseline (bench/baseline_app.py), the peers users would build
instead (Flask + Celery on Redis, Flask + procrastinate on PostgreSQL: bench/peer_*.py, 4
gunicorn sync workers each), `webhook-app serve` on SQLite (its front, web and job worker) and
`webhook-app web` (SQLite and/or PostgreSQL; no job worker running), 30 KB bodies at 4 and 32
connections in interleaved rounds (median reported), then, baseline and `web` only, body sizes
1 KB / 300 KB and 1 / 4 workers. End to end: the sandbox with 50 ms API latency and Commerce
Layer's test-mode rate limits, `webhook-app web` + `webhook-app worker`, 5,000 events (see
bench/e2e.py). Scale-out (`--only scaleout`, `make bench-scaleout`): 1, 2 and 4 `webhook-app web`
instances and 2 workers on one PostgreSQL (see bench/scaleout.py).

Results: bench-results/<timestamp>.json (and latest.json), bench-results/summary.md, and the
generated blocks of BENCHMARKS.md (full runs only; --no-doc leaves them alone).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import bodies as bodies_mod  # noqa: E402
from bench import common  # noqa: E402
from bench.common import fsync_probe, log, machine_info, pg_available, write_json  # noqa: E402
from bench.ingest import MEASURE_TOPICS, OURS, PEER_WORKERS, PEERS, WARMUP_TOPIC, Config, run_one  # noqa: E402

RESULTS = REPO / "bench-results"
TARGETS = {"rps_ratio_min": 0.8, "p99_ratio_max": 2.0, "rss_mb_max": 80.0, "errors": 0}


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 2)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of the rounds for speed; sums and maxima for errors and memory."""
    return {
        "rounds": len(rows),
        "rps": _median(rows, "rps"),
        "p50_ms": _median(rows, "p50_ms"),
        "p99_ms": _median(rows, "p99_ms"),
        "rps_rounds": [r["rps"] for r in rows],
        "p99_rounds": [r["p99_ms"] for r in rows],
        "errors": sum(r["errors"] for r in rows),
        "non_2xx": sum(r["non_2xx"] for r in rows),
        "socket_errors": sum(r["socket_errors"] for r in rows),
        "requests": sum(r["requests"] for r in rows),
        "master_mb": max(r["rss"]["master_mb"] for r in rows),
        "worker_max_mb": max(r["rss"]["worker_max_mb"] for r in rows),
        "max_mb": max(r["rss"]["max_mb"] for r in rows),
        "foreign_cpu_pct": max(r["cpu"]["foreign_cpu_pct"] for r in rows),
        "all_acknowledged_stored": all(r.get("all_acknowledged_stored", True) for r in rows),
        "wrapped": max(r["wrapped"] for r in rows),
        "duplicates_answered": sum(r["statuses"].get("200", 0) for r in rows if not r["server"].startswith("baseline")),
        "commit_batch_mean": max((r.get("commit_batches") or {}).get("mean", 0.0) for r in rows),
        # CPU of the server's processes (and of PostgreSQL's) per request of the measured run
        # (and of Redis's, for the Celery peer)
        "cpu_us_per_request": _median(
            [
                {
                    "v": (r["cpu"]["server_cpu_s"] + r["cpu"]["postgres_cpu_s"] + r["cpu"].get("redis_cpu_s", 0.0))
                    / r["requests"]
                    * 1e6
                }
                for r in rows
            ],
            "v",
        ),
    }


def ingest_kinds(backends: list[str], peers: bool) -> list[str]:
    """The receivers of the main comparison, in the order of issue 22's table: the stateless
    limit, the peers, then ours (`serve` on SQLite, `web` on each backend). procrastinate needs
    the PostgreSQL server, so it runs when the PostgreSQL backend does."""
    kinds = ["baseline"]
    if peers:
        kinds += [k for k in PEERS if k != "procrastinate" or "postgres" in backends]
    if "sqlite" in backends:
        kinds.append("serve-sqlite")
    return kinds + [b for b in backends if b in OURS]


def peers_missing() -> str | None:
    """Why the peers cannot run here (one line), or None."""
    import importlib.util

    missing = [m for m in ("celery", "redis", "procrastinate") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed (make bench-deps installs bench/requirements.txt)"
    import re

    from bench.common import REDIS_URL, redis_client

    try:
        redis_client().ping()
    except Exception as exc:  # any failure means "not reachable"
        shown = re.sub(r"//[^/@]*@", "//***@", REDIS_URL)  # Redis URLs often carry a password alone
        return f"Redis is not reachable at {shown} ({type(exc).__name__}; set BENCH_REDIS_URL)"
    return None


def compare(ours: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    rps_ratio = round(ours["rps"] / base["rps"], 2) if base["rps"] else None
    p99_ratio = round(ours["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None
    checks = {
        "throughput": rps_ratio is not None and rps_ratio >= TARGETS["rps_ratio_min"],
        "p99": p99_ratio is not None and p99_ratio <= TARGETS["p99_ratio_max"],
        "errors": ours["errors"] == 0,
        "rss": ours["max_mb"] < TARGETS["rss_mb_max"],
        "durable": ours["all_acknowledged_stored"],
    }
    return {"rps_ratio": rps_ratio, "p99_ratio": p99_ratio, "checks": checks, "met": all(checks.values())}


def run_ingest(args: argparse.Namespace, run_dir: Path, backends: list[str]) -> dict[str, Any]:
    quick = args.quick
    warmup = 1.0 if quick else 3.0
    seconds = args.seconds or (4.0 if quick else 10.0)
    rounds = args.rounds or (1 if quick else 3)
    bodies_dir = RESULTS / "bodies"
    log("generating bodies (cached in bench-results/bodies)")
    sets = [("30k", 10_000)] + ([] if quick else [("1k", 10_000), ("300k", 1_000)])
    bodies = {size: bodies_mod.ensure_bodies(bodies_dir, size, count) for size, count in sets}
    servers = ingest_kinds(backends, peers=not args.no_peers)
    sweep_servers = ["baseline", *backends]
    reference = [] if quick or "sqlite" not in backends else ["baseline-sqlite"]
    out: dict[str, Any] = {
        "bodies": bodies,
        "warmup_s": warmup,
        "seconds": seconds,
        "rounds": rounds,
        "servers": servers,
        "runs": [],
        "configs": {},
        "topics": len(MEASURE_TOPICS),
        "warmup_topic": WARMUP_TOPIC,
    }
    n = 0

    def one(cfg: Config, kind: str, profile: bool = False) -> dict[str, Any]:
        nonlocal n
        n += 1
        r = run_one(
            cfg,
            kind,
            bodies[cfg.size],
            warmup=warmup,
            seconds=seconds,
            workdir=run_dir / "ingest" / f"{n:02d}-{cfg.name}-{kind}",
            run_id=f"{n}",
            profile=profile,
            quiet_wait=5.0 if quick else 10.0,
        )
        r["round"] = len([x for x in out["runs"] if x["config"] == cfg.name and x["server"] == kind]) + 1
        out["runs"].append(r)
        return r

    configs = [Config("main", "30k", 2, 10_000), Config("main-32", "30k", 2, 10_000, conns=32)]
    if not quick:
        configs += [
            Config("size-1k", "1k", 2, 10_000),
            Config("size-300k", "300k", 2, 1_000),
            Config("workers-1", "30k", 1, 10_000, ours_workers=1),
            Config("workers-4", "30k", 4, 10_000, ours_workers=4),
        ]
    for cfg in configs:
        kinds = servers + reference if cfg.name.startswith("main") else sweep_servers
        per_server: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for r in range(rounds if cfg.name.startswith("main") else 1):
            order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]  # rotate who goes first
            for kind in order:
                per_server[kind].append(one(cfg, kind))
        agg = {k: aggregate(v) for k, v in per_server.items()}
        entry: dict[str, Any] = {
            "size": cfg.size,
            "workers": cfg.workers,
            "ours_workers": cfg.ours_workers,
            "connections": cfg.connections,
            "peer_workers": PEER_WORKERS,
            "body_bytes": bodies[cfg.size]["mean_bytes"],
            "servers": agg,
            "vs_baseline": {},
        }
        for kind in kinds:
            if kind != "baseline":
                entry["vs_baseline"][kind] = compare(agg[kind], agg["baseline"])
        out["configs"][cfg.name] = entry
    if args.profile:
        from bench.profile_report import report

        out["profiles"] = {}
        for kind in backends:
            r = one(Config("main", "30k", 2, 10_000), kind, profile=True)
            r["profiled"] = True
            out["profiles"][kind] = {
                "rps_while_profiled": r["rps"],
                **report([Path(p) for p in r.get("profile_files", [])], top=20),
            }
        out["runs"] = [r for r in out["runs"] if not r.get("profiled")] + [r for r in out["runs"] if r.get("profiled")]
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs, main configuration only (a smoke test)")
    p.add_argument("--only", choices=["ingest", "e2e", "scaleout"], help="run one part only")
    p.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--no-peers", action="store_true", help="leave out the Celery and procrastinate receivers")
    p.add_argument(
        "--instances",
        default="1,2,4",
        help="scale-out: numbers of `webhook-app web` instances on one PostgreSQL (default 1,2,4)",
    )
    p.add_argument("--profile", action="store_true", help="also run py-spy on the workers (extra runs)")
    p.add_argument("--rounds", type=int, help="rounds of the main ingest comparison (default 3, quick 1)")
    p.add_argument("--seconds", type=float, help="seconds per measured wrk run (default 10, quick 4)")
    p.add_argument("--no-doc", action="store_true", help="do not rewrite the generated block of BENCHMARKS.md")
    p.add_argument("--app-dir", type=Path, help="import webhook_app from this checkout (A/B of a change)")
    return p


class _CannotRun(Exception):
    """What the runner needs and does not have (printed, exit status 2)."""


def _preflight(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """The backends and scale-out instance counts to run, once everything they need is there."""
    if shutil.which("wrk") is None and args.only != "e2e":
        raise _CannotRun("wrk is not installed (Debian: apt-get install wrk)")
    if args.app_dir:
        common.APP_DIR = args.app_dir.resolve()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    instances: list[int] = []
    if args.only == "scaleout":
        backends = ["postgres"]
        try:
            instances = [int(x) for x in args.instances.split(",") if x.strip()]
        except ValueError:
            instances = []
        if not instances or min(instances) < 1:
            raise _CannotRun(f"--instances wants a comma-separated list of counts, got {args.instances!r}")
    if args.only in (None, "ingest") and not args.no_peers:
        why = peers_missing()
        if why:
            raise _CannotRun(f"the peers cannot run: {why}; or pass --no-peers")
    if "postgres" in backends and not pg_available():
        raise _CannotRun(f"PostgreSQL is not reachable at {common.PG_ADMIN_URL} (set BENCH_PG_ADMIN_URL)")
    return backends, instances


def _measure(args: argparse.Namespace, run_dir: Path, backends: list[str], instances: list[int]) -> dict[str, Any]:
    """Machine facts, the fsync probe, then the parts `--only` asks for."""
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "quick": args.quick,
        "backends": backends,
        "app_dir": str(common.APP_DIR),
        "targets": TARGETS,
        "machine": machine_info(),
    }
    results["git"] = _git()
    log("measuring fsync cost")
    results["fsync"] = fsync_probe(run_dir / "fsync")
    if args.only in (None, "ingest"):
        results["ingest"] = run_ingest(args, run_dir, backends)
    if args.only in (None, "e2e"):
        from bench.e2e import run_e2e

        results["e2e"] = {b: run_e2e(b, run_dir / f"e2e-{b}", quick=args.quick) for b in backends}
    if args.only == "scaleout":
        from bench.scaleout import run_scaleout

        results["scaleout"] = run_scaleout(
            run_dir / "scaleout",
            bodies_dir=RESULTS / "bodies",
            instances=instances,
            quick=args.quick,
            seconds=args.seconds,
            rounds=args.rounds,
        )
    return results


def _publish(args: argparse.Namespace, results: dict[str, Any], stamp: str) -> None:
    """The results as JSON, the summary as Markdown (printed), and BENCHMARKS.md's generated block."""
    write_json(RESULTS / f"{stamp}.json", results)
    write_json(RESULTS / "latest.json", results)
    from bench.report import SCALEOUT_END, SCALEOUT_START, render, render_scaleout, update_doc

    if args.only == "scaleout":
        text = render_scaleout(results)
        (RESULTS / "scaleout.md").write_text(text)
        print(text)
        if not args.quick and not args.no_doc and not args.app_dir:
            update_doc(REPO / "BENCHMARKS.md", text, start=SCALEOUT_START, end=SCALEOUT_END)
            log("BENCHMARKS.md updated (scale-out block)")
    else:
        text = render(results)
        (RESULTS / "summary.md").write_text(text)
        print(text)
        if not args.quick and not args.no_doc and args.only is None and not args.app_dir:
            update_doc(REPO / "BENCHMARKS.md", text)
            log("BENCHMARKS.md updated (generated block)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        backends, instances = _preflight(args)
    except _CannotRun as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.time()
    results = _measure(args, RESULTS / f"run-{stamp}", backends, instances)
    results["elapsed_s"] = round(time.time() - started, 1)
    _publish(args, results, stamp)
    log(f"done in {results['elapsed_s']} s; results in bench-results/{stamp}.json")
    return 0


def _git() -> dict[str, str]:
    import subprocess

    def run(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=common.APP_DIR, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "commit": run("rev-parse", "--short", "HEAD"),
        "branch": run("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": "yes" if run("status", "--porcelain", "--untracked-files=no") else "no",
    }


if __name__ == "__main__":
    raise SystemExit(main())
