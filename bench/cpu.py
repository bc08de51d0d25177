"""How busy the machine was during a run, and how much of that was not the benchmark.

This machine may be shared (other sessions' tests, package installs). `CpuMonitor` reads the
machine's busy time from /proc/stat and the CPU time of the processes under test (the server
tree, PostgreSQL's and Redis's processes, and wrk via RUSAGE_CHILDREN) so each result can say how
much CPU something else took while it ran ("foreign" CPU, as a share of all cores).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def proc_cpu_seconds(pid: int) -> float:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(parts[11]) + int(parts[12])) / _TICK  # utime, stime


def pids_named(comm: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def postgres_pids() -> list[int]:
    return pids_named("postgres")


def redis_pids() -> list[int]:
    """The Redis server (the Celery peer's broker); its CPU is the peer's, as PostgreSQL's is ours."""
    return pids_named("redis-server")


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (wrk)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuMonitor:
    """start() before the measured run, stop(server_pids) after it."""

    def start(self, server_pids: Iterable[int]) -> CpuMonitor:
        self.t0 = time.monotonic()
        self.m0 = machine_jiffies()
        self.children0 = children_cpu()
        self.p0 = {pid: proc_cpu_seconds(pid) for pid in [*server_pids, *postgres_pids(), *redis_pids()]}
        return self

    def stop(self, server_pids: Iterable[int]) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        busy1, total1 = machine_jiffies()
        busy = (busy1 - self.m0[0]) / _TICK
        capacity = (total1 - self.m0[1]) / _TICK or 1e-9
        server = sum(max(0.0, proc_cpu_seconds(p) - self.p0.get(p, 0.0)) for p in server_pids)
        pg = sum(max(0.0, proc_cpu_seconds(p) - self.p0.get(p, 0.0)) for p in postgres_pids())
        rd = sum(max(0.0, proc_cpu_seconds(p) - self.p0.get(p, 0.0)) for p in redis_pids())
        load = children_cpu() - self.children0  # wrk (and py-spy when profiling), reaped meanwhile
        foreign = max(0.0, busy - server - pg - rd - load)
        return {
            "wall_s": round(wall, 2),
            "machine_busy_pct": round(100 * busy / capacity, 1),
            "server_cpu_s": round(server, 2),
            "postgres_cpu_s": round(pg, 2),
            "redis_cpu_s": round(rd, 2),
            "load_generator_cpu_s": round(load, 2),
            "foreign_cpu_pct": round(100 * foreign / capacity, 1),
        }


def wait_for_quiet(*, busy_pct: float = 25.0, settle_s: float = 1.0, max_wait_s: float = 15.0) -> dict[str, Any]:
    """Before a run (nothing of ours running): wait until the machine has been under `busy_pct`
    busy for `settle_s`, at most `max_wait_s`. Returns how long it waited and the last reading."""
    start = time.monotonic()
    quiet_since: float | None = None
    last = 0.0
    while True:
        b0, t0 = machine_jiffies()
        time.sleep(0.5)
        b1, t1 = machine_jiffies()
        last = 100 * (b1 - b0) / max(1, t1 - t0)
        now = time.monotonic()
        if last < busy_pct:
            quiet_since = quiet_since or now
            if now - quiet_since >= settle_s:
                return {"waited_s": round(now - start, 1), "busy_pct": round(last, 1), "quiet": True}
        else:
            quiet_since = None
        if now - start >= max_wait_s:
            return {"waited_s": round(now - start, 1), "busy_pct": round(last, 1), "quiet": False}
