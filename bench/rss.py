"""Sample the resident memory of a process tree (a gunicorn master and its workers) from /proc.

`RssSampler(pid)` polls `/proc/PID/status` of the root and of every descendant in a thread;
for each process it keeps the largest VmRSS seen and the last VmHWM read (the kernel's own
peak resident set, which catches peaks between samples). `stop()` returns one entry per process:
`{"pid", "role" (master | worker), "peak_rss_kb", "hwm_kb"}`. Linux only.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return out


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def children(pid: int) -> list[int]:
    """Direct children of `pid` (via /proc/PID/task/*/children, else a scan of /proc)."""
    found: list[int] = []
    tasks = Path(f"/proc/{pid}/task")
    try:
        for task in tasks.iterdir():
            text = (task / "children").read_text()
            found += [int(x) for x in text.split()]
        return found
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        pass
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _status(int(entry.name))
            if st.get("PPid") == str(pid):
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children(p):
            out.append(c)
            todo.append(c)
    return out


class RssSampler:
    def __init__(self, pid: int, *, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self._stop = threading.Event()
        self._seen: dict[int, dict[str, Any]] = {}
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def _sample(self) -> None:
        for pid in [self.pid, *descendants(self.pid)]:
            st = _status(pid)
            if not st:
                continue
            entry = self._seen.setdefault(
                pid,
                {
                    "pid": pid,
                    "role": "master" if pid == self.pid else "worker",
                    "name": st.get("Name", ""),
                    "peak_rss_kb": 0,
                    "hwm_kb": 0,
                },
            )
            entry["peak_rss_kb"] = max(entry["peak_rss_kb"], _kb(st.get("VmRSS")))
            entry["hwm_kb"] = max(entry["hwm_kb"], _kb(st.get("VmHWM")))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> list[dict[str, Any]]:
        self._sample()
        self._stop.set()
        self._thread.join(timeout=5)
        return sorted(self._seen.values(), key=lambda e: (e["role"] != "master", e["pid"]))

    def worker_pids(self) -> list[int]:
        return [p for p in descendants(self.pid) if os.path.exists(f"/proc/{p}")]


def summarize(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak per role in MB (the larger of VmHWM and the sampled VmRSS)."""

    def mb(e: dict[str, Any]) -> float:
        return round(max(e["hwm_kb"], e["peak_rss_kb"]) / 1024, 1)

    masters = [mb(e) for e in entries if e["role"] == "master"]
    workers = [mb(e) for e in entries if e["role"] == "worker"]
    return {
        "master_mb": max(masters, default=0.0),
        "worker_max_mb": max(workers, default=0.0),
        "workers_mb": workers,
        "max_mb": max(masters + workers, default=0.0),
    }
