"""What one SQLite commit of a 30 KB delivery costs on this machine, by rows per commit.

    python bench/sqlite_cost.py [--rows 1200]

A plain `sqlite3` connection in WAL mode on a fresh file in bench-results/ inserts each body (the
bench's own 30 KB signed orders) and a job row, committing every 1, 4 or 16 rows, with
`synchronous=FULL` (what the service uses: durable at commit) and, for comparison, `OFF` (no
fsync). Wall and CPU time (`time.process_time`, kernel time included) per row: the difference
between FULL and OFF is what the fsync costs, and how it shrinks with rows per commit is what
group commit can save at most.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import bodies as bodies_mod  # noqa: E402


def measure(path: Path, body: bytes, *, synchronous: str, per_commit: int, rows: int) -> tuple[float, float]:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE deliveries (id INTEGER PRIMARY KEY, identity TEXT UNIQUE, body BLOB, headers TEXT)")
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, delivery_id INTEGER, state TEXT, next_at REAL)")
    conn.execute("CREATE INDEX jobs_pending ON jobs (state, next_at)")
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, rows, per_commit):
        conn.execute("BEGIN IMMEDIATE")
        for n in range(start, start + per_commit):
            row = conn.execute(
                "INSERT INTO deliveries (identity, body, headers) VALUES (?, ?, ?) RETURNING id",
                (f"identity-{n}", body, '{"User-Agent": "bench"}'),
            ).fetchone()
            conn.execute("INSERT INTO jobs (delivery_id, state, next_at) VALUES (?, 'pending', 0)", (row[0],))
        conn.execute("COMMIT")
    result = ((time.perf_counter() - wall) / rows * 1e6, (time.process_time() - cpu) / rows * 1e6)
    conn.close()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1200, help="rows per measurement (a multiple of 16)")
    args = p.parse_args(argv)
    found = bodies_mod.ensure_bodies(REPO / "bench-results" / "bodies", "30k", 10_000)
    with Path(found["file"]).open("rb") as f:
        body = f.readline().split(b" ", 1)[1].rstrip(b"\n")
    path = REPO / "bench-results" / "sqlite-cost.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"SQLite {sqlite3.sqlite_version}, WAL, {len(body):,}-byte bodies, {args.rows} rows each, {os.cpu_count()} CPUs"
    )
    print("synchronous  rows/commit   wall us/row   CPU us/row")
    for synchronous, per_commit in (("FULL", 1), ("FULL", 4), ("FULL", 16), ("OFF", 1)):
        wall, cpu = measure(path, body, synchronous=synchronous, per_commit=per_commit, rows=args.rows)
        print(f"{synchronous:11} {per_commit:11d} {wall:13.0f} {cpu:12.0f}")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
