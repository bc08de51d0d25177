"""What SQLite costs to store one delivery with the service's own schema, and what changes it.

    python bench/store_cost.py [--rows 3000] [--per-commit 2] [--repeat 3]

A plain `sqlite3` connection on a copy of a database migrated by webhook-app (every table and
index the commit writer's insert touches) inserts the bench's own 30 KB signed order bodies as
the writer does: the delivery row (`INSERT_DELIVERY`, its identity a SHA-256, the order id a
random key as in production), then its job, `--per-commit` deliveries per synced commit
(`synchronous=FULL`, WAL, foreign keys on: the service's settings). Reported per variant: CPU
(`time.process_time`, the kernel's share included) and wall time per delivery, least and
greatest of `--repeat` runs, variants interleaved:

- `service`: the connection as the service opens it;
- `cache 16 MB`, `checkpoint 4000`, `mmap 64 MB`: one pragma changed;
- `8 indexes fewer`: the secondary indexes dropped, only the two unique ones and the claim's left
  (how much the indexes cost);
- `body zlib-1`, `body zstd-1`: the body compressed before the insert, the compression's own CPU
  counted (zstd only when the `zstandard` package is installed).

These are what the commit writer's SQLite part costs apart from its Python (`bench/per_process.py`
gives the writer's whole CPU per delivery under load).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import bodies as bodies_mod  # noqa: E402

#: the secondary indexes a delivery and its job write, apart from the unique ones and the claim's
SECONDARY_INDEXES = (
    "deliveries_order",
    "deliveries_received",
    "deliveries_with_body",
    "deliveries_organization",
    "jobs_order",
    "jobs_running",
    "jobs_organization_pending",
    "deliveries_replay_of",
)


def _zstd() -> Callable[[bytes], bytes] | None:
    try:
        import zstandard  # type: ignore[import-not-found]  # optional: not in the service's lock
    except ImportError:
        return None
    return zstandard.ZstdCompressor(level=1).compress  # type: ignore[no-any-return]


def variants() -> dict[str, tuple[list[str], Callable[[bytes], bytes] | None]]:
    """name -> (statements run on the connection first, the body's compression)."""
    out: dict[str, tuple[list[str], Callable[[bytes], bytes] | None]] = {
        "service": ([], None),
        "cache 16 MB": (["PRAGMA cache_size = -16000"], None),
        "checkpoint 4000": (["PRAGMA wal_autocheckpoint = 4000"], None),
        "mmap 64 MB": (["PRAGMA mmap_size = 67108864"], None),
        f"{len(SECONDARY_INDEXES)} indexes fewer": ([f"DROP INDEX {name}" for name in SECONDARY_INDEXES], None),
        "body zlib-1": ([], lambda b: zlib.compress(b, 1)),
    }
    zstd = _zstd()
    if zstd is not None:
        out["body zstd-1"] = ([], zstd)
    return out


def template(directory: Path) -> Path:
    """A database migrated by webhook-app, checkpointed into one file."""
    path = directory / "template.db"
    from webhook_app.store import open_store

    store = open_store(f"sqlite:///{path}")
    store.migrate()
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def measure(
    db: Path,
    bodies: list[bytes],
    *,
    setup: list[str],
    compress: Callable[[bytes], bytes] | None,
    rows: int,
    per_commit: int,
) -> tuple[float, float]:
    from webhook_app.store.sql.intake import INSERT_COLUMNS, INSERT_DELIVERY

    conn = sqlite3.connect(db, isolation_level=None)
    for pragma in ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA foreign_keys = ON", *setup):
        conn.execute(pragma)
    insert = INSERT_DELIVERY + " RETURNING id"
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, rows, per_commit):
        conn.execute("BEGIN IMMEDIATE")
        for n in range(start, start + per_commit):
            body = bodies[n % len(bodies)] + str(n).encode()  # distinct, as the bench's are
            order_id = hashlib.md5(str(n).encode(), usedforsecurity=False).hexdigest()
            row = {
                "identity": hashlib.sha256(body).hexdigest(),
                "topic": "orders.place",
                "resource_type": "orders",
                "resource_id": order_id,
                "order_id": order_id,
                "received_at": time.time(),
                "secret_label": "bench",
                "headers": '{"User-Agent": "bench"}',
                "body": body if compress is None else compress(body),
                "status": "queued",
                "replay_of": None,
                "organization": "",
            }
            (delivery_id,) = conn.execute(insert, tuple(row[c] for c in INSERT_COLUMNS)).fetchone()
            conn.execute(
                "INSERT INTO jobs (delivery_id, order_id, topic, state, attempts, next_attempt_at, created_at,"
                " updated_at, organization) VALUES (?, ?, 'orders.place', 'pending', 0, ?, ?, ?, '')",
                (delivery_id, order_id, row["received_at"], row["received_at"], row["received_at"]),
            )
        conn.execute("COMMIT")
    result = ((time.process_time() - cpu) / rows * 1e6, (time.perf_counter() - wall) / rows * 1e6)
    conn.close()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=3000, help="deliveries per run")
    p.add_argument("--per-commit", type=int, default=2, help="deliveries per commit (the writer's batches: 1.5-3)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each variant, interleaved")
    args = p.parse_args(argv)
    found = bodies_mod.ensure_bodies(REPO / "bench-results" / "bodies", "30k", 10_000)
    with Path(found["file"]).open("rb") as f:
        bodies = [line.split(b" ", 1)[1].rstrip(b"\n") for line in itertools.islice(f, 500)]
    work = Path(tempfile.mkdtemp(prefix="webhook-app-store-cost-"))
    try:
        tmpl = template(work)
        chosen = variants()
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in chosen}
        for r in range(args.repeat):
            for name, (setup, compress) in chosen.items():
                db = work / f"run-{r}.db"
                shutil.copy(tmpl, db)
                results[name].append(
                    measure(db, bodies, setup=setup, compress=compress, rows=args.rows, per_commit=args.per_commit)
                )
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"SQLite {sqlite3.sqlite_version}, the service's schema, {len(bodies[0]):,}-byte bodies, {args.rows} deliveries"
        f" per run, {args.per_commit} per commit, {args.repeat} runs each, {os.cpu_count()} CPUs"
    )
    print(f"{'variant':22} {'CPU us/delivery':>20} {'wall us/delivery':>20}")
    for name, runs in results.items():
        cpus, walls = sorted(c for c, _ in runs), sorted(w for _, w in runs)
        print(f"{name:22} {cpus[0]:9.0f} - {cpus[-1]:<8.0f} {walls[0]:9.0f} - {walls[-1]:<8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
