"""CPU per delivery of each process of one receiver under load, and how busy the machine was.

    python bench/per_process.py [--kind sqlite] [--connections 32] [--seconds 8] [--workers N]

Starts one receiver of the ingest benchmark (`bench/ingest.py`'s kinds: `sqlite` and `postgres`
are `webhook-app web`, `serve-sqlite` is `webhook-app serve`, `baseline`, `baseline-sqlite`,
`celery`, `procrastinate`), warms it up for 2 s, then runs wrk with the bench's distinct signed
30 KB bodies for `--seconds` and reports, for every process of the receiver, its CPU
(`/proc/<pid>/stat`, user + system) divided by the deliveries answered 2xx; then PostgreSQL's and
Redis' processes (those running when the measured run starts: webhook-app opens its connections
during the warm-up), the whole machine's busy share and wrk's own CPU per request. `--workers`
sets the gunicorn workers of the baselines and the peers (default 2 for the baselines, as in the
ingest benchmark, 4 for the peers); webhook-app runs on its defaults.

What it shows: where a receiver's CPU goes by process (web workers, the commit writer, `serve`'s
job worker), and whether a receiver is bound by the CPU (the machine near 100% busy) or by
waiting (a lock, an fsync: the machine partly idle).
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

from bench import ingest  # noqa: E402
from bench.bodies import ensure_bodies  # noqa: E402
from bench.cpu import children_cpu, machine_jiffies, postgres_pids, proc_cpu_seconds, redis_pids  # noqa: E402
from bench.rss import descendants  # noqa: E402


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    for i, word in enumerate(words):  # the interesting part: after `-m module` or the script
        if word == "-m" and i + 1 < len(words):
            return " ".join(words[i + 1 : i + 3])
    return " ".join(Path(w).name for w in words[:3])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="sqlite", help="the receiver (bench/ingest.py's kinds)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--workers", type=int, help="gunicorn workers of the baselines and peers")
    args = p.parse_args(argv)
    workers = args.workers or (4 if args.kind in ingest.PEERS else 2)
    bodies = ensure_bodies(REPO / "bench-results" / "bodies", "30k", 10_000)
    workdir = Path(f"/tmp/webhook-app-per-process-{os.getpid()}")
    workdir.mkdir(parents=True, exist_ok=True)
    server = ingest.Server(args.kind, workers, workdir, f"pp{os.getpid()}")
    server.start()
    try:
        assert server.proc is not None
        ingest.run_wrk(
            server.url, bodies["file"], [ingest.WARMUP_TOPIC], seconds=2, connections=args.connections,
            out=workdir / "warmup.json",
        )  # fmt: skip
        pids = [server.proc.pid, *descendants(server.proc.pid)]
        services = {"PostgreSQL (all its processes)": postgres_pids(), "Redis": redis_pids()}
        before = {pid: proc_cpu_seconds(pid) for pid in [*pids, *(p for group in services.values() for p in group)]}
        busy0, total0 = machine_jiffies()
        wrk0 = children_cpu()
        started = time.monotonic()
        measured = ingest.run_wrk(
            server.url, bodies["file"], ingest.MEASURE_TOPICS, seconds=args.seconds, connections=args.connections,
            out=workdir / "measured.json",
        )  # fmt: skip
        elapsed = time.monotonic() - started
        busy1, total1 = machine_jiffies()
        wrk_cpu = children_cpu() - wrk0
        after = {pid: proc_cpu_seconds(pid) for pid in pids}
        names = {pid: _name(pid) for pid in pids}
        shared = {
            name: sum(max(0.0, proc_cpu_seconds(p) - before.get(p, 0.0)) for p in group)
            for name, group in services.items()
        }
    finally:
        server.stop()
    answered = sum(n for code, n in measured["statuses"].items() if code.startswith("2"))
    if not answered:
        print(f"no 2xx answers: {measured['statuses']}")
        return 1
    print(
        f"{args.kind}, {args.connections} connections, {args.seconds:g} s: {answered / elapsed:,.0f} req/s,"
        f" machine {100 * (busy1 - busy0) / max(1, total1 - total0):.0f}% busy"
    )
    total = 0.0
    for pid in pids:
        used = max(0.0, after[pid] - before.get(pid, 0.0))
        total += used
        print(f"  {pid:>7}  {used / answered * 1e6:6.0f} us/delivery  {names[pid]}")
    print(f"  all      {total / answered * 1e6:6.0f} us/delivery")
    for name, used in shared.items():
        if used / answered * 1e6 >= 1:
            print(f"  +        {used / answered * 1e6:6.0f} us/delivery  {name}, shared by every user of it")
    print(f"  wrk      {wrk_cpu / answered * 1e6:6.0f} us/request (the load generator, on the same cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
