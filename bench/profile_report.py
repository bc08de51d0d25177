"""Summarize py-spy raw (collapsed) stacks: where the samples are, by function, inclusive and self.

    python bench/profile_report.py bench-results/<run>/ingest/.../py-spy-*.txt [--top 25]

Idle samples (a gunicorn sync worker waiting in `select`/`accept`) are counted separately so
that the percentages are of the time the worker was busy.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_IDLE = re.compile(r"\b(select|accept|wait_for_readable|sleep|poll)\b \(")


def _frame(f: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    m = re.match(r"^(.*?) \((.*?):\d+\)$", f)
    if not m:
        return f
    name, path = m.groups()
    parts = path.split("/")
    short = "/".join(parts[-2:]) if "site-packages" in path or "webhook_app" in path else parts[-1]
    return f"{name} ({short})"


def load(files: Iterable[Path]) -> tuple[Counter[str], Counter[str], int, int]:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = idle = 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
            if not frames:
                continue
            if _IDLE.search(frames[-1]) and "intake" not in stack:
                idle += n
                continue
            busy += n
            for f in set(frames):
                inclusive[f] += n
            own[frames[-1]] += n
    return inclusive, own, busy, idle


def report(files: list[Path], top: int = 25) -> dict[str, Any]:
    inclusive, own, busy, idle = load(files)
    pct = (lambda n: round(100 * n / busy, 1)) if busy else (lambda n: 0.0)
    return {
        "samples_busy": busy,
        "samples_idle": idle,
        "inclusive": [{"frame": f, "pct": pct(n)} for f, n in inclusive.most_common(top)],
        "self": [{"frame": f, "pct": pct(n)} for f, n in own.most_common(top)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    r = report(args.files, args.top)
    print(f"busy samples {r['samples_busy']}, idle {r['samples_idle']}")
    for title in ("inclusive", "self"):
        print(f"\n{title}:")
        for row in r[title]:
            print(f"  {row['pct']:5.1f}%  {row['frame']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
