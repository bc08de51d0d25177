"""A long synthetic run under retention: does the database size level off?

    python bench/retention.py [--backend sqlite|postgres|both] [--days 40] [--per-day 500]
                              [--bodies-days 7] [--records-days 21] [--seconds 240]

Simulated days on a hand-moved clock (the real store code, real SQLite and PostgreSQL): each day
`--per-day` deliveries of about 30 KB arrive (bench/bodies.py, the real sample's shape), their
jobs are finished, and the worker's prune (webhook_app.store.retention, the same batches it runs
every WEBHOOK_APP_PRUNE_INTERVAL) runs every simulated hour. The database size is printed at the
end of each day; without retention it would grow linearly. Bounded by `--seconds` of wall time:
the run stops early (and says so) rather than overrun.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import bodies as bodies_mod  # noqa: E402
from webhook_app.config import Settings  # noqa: E402
from webhook_app.events import Delivery  # noqa: E402
from webhook_app.signing import WebhookSecret, sign  # noqa: E402
from webhook_app.store import DecisionRecord, Store, retention  # noqa: E402
from webhook_app.store.sqlite import SQLiteStore  # noqa: E402

DAY = 86400.0
SECRET = bodies_mod.BENCH_SECRET
DECISION = DecisionRecord(rule="bench", action="skip", reason="bench", outcome="skipped", mode="shadow")


def run(store: Store, *, days: int, per_day: int, bodies_days: float, records_days: float, budget: float) -> dict:
    settings = Settings(retain_bodies_days=bodies_days, retain_records_days=records_days, prune_batch=500)
    secrets = (WebhookSecret("bench", SECRET.encode()),)
    source = bodies_mod.generate("30k", count=days * per_day, seed=7)
    now = 1_800_000_000.0
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    prune_seconds = 0.0
    stopped_early = False
    for day in range(1, days + 1):
        for hour in range(24):
            for _ in range(per_day // 24 + (1 if hour < per_day % 24 else 0)):
                body = next(source)
                headers = {
                    "Content-Type": "application/json",
                    "X-CommerceLayer-Topic": "orders.place",
                    "X-CommerceLayer-Signature": sign(body, secret=SECRET),
                }
                store.record_delivery(Delivery.from_http(headers, body, secrets=secrets), now=now)
                job = store.claim_job(worker="bench", lease_seconds=60, now=now)
                if job is not None:
                    store.finish_job(job.id, worker="bench", decision=DECISION, now=now)
                now += DAY / per_day
            t = time.monotonic()
            retention.prune(store, settings, now=now)
            prune_seconds += time.monotonic() - t
        st = store.storage_stats()
        rows.append(
            {
                "day": day,
                "received": day * per_day,
                "db_mb": round(st.bytes / 1e6, 1),
                "bodies_kept": st.bodies_kept,
                "oldest_days": round((now - st.oldest_received_at) / DAY, 1) if st.oldest_received_at else 0,
            }
        )
        print(
            f"day {day:3d}: {day * per_day:6d} received, database {rows[-1]['db_mb']:7.1f} MB,"
            f" {st.bodies_kept:5d} bodies kept, oldest delivery {rows[-1]['oldest_days']} days",
            flush=True,
        )
        if time.monotonic() - started > budget:
            stopped_early = day < days
            break
    return {
        "rows": rows,
        "prune_seconds": round(prune_seconds, 2),
        "wall_seconds": round(time.monotonic() - started, 1),
        "stopped_early": stopped_early,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    p.add_argument("--days", type=int, default=40)
    p.add_argument("--per-day", type=int, default=500)
    p.add_argument("--bodies-days", type=float, default=7)
    p.add_argument("--records-days", type=float, default=21)
    p.add_argument("--seconds", type=float, default=240, help="wall-time budget per backend")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = p.parse_args(argv)
    out: dict[str, Any] = {}
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        print(
            f"--- {backend}: {args.per_day}/day of ~30 KB,"
            f" bodies kept {args.bodies_days} d, records {args.records_days} d"
        )
        if backend == "sqlite":
            tmp = tempfile.mkdtemp(prefix="bench-retention-")
            store: Store = SQLiteStore(str(Path(tmp) / "retention.db"))
            store.migrate()
            cleanup = None
        else:
            import psycopg

            from webhook_app.store.postgres import PostgresStore

            schema = f"bench_ret_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(args.pg_url, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            sep = "&" if "?" in args.pg_url else "?"
            store = PostgresStore(f"{args.pg_url}{sep}options=-csearch_path%3D{schema}")
            store.migrate()

            def cleanup(schema: str = schema) -> None:
                with psycopg.connect(args.pg_url, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")

        try:
            out[backend] = run(
                store,
                days=args.days,
                per_day=args.per_day,
                bodies_days=args.bodies_days,
                records_days=args.records_days,
                budget=args.seconds,
            )
        finally:
            store.close()
            if cleanup:
                cleanup()
        r = out[backend]
        print(
            f"{backend}: prune took {r['prune_seconds']} s of {r['wall_seconds']} s"
            + (" (stopped early)" if r["stopped_early"] else "")
        )
    results = REPO / "bench-results"
    results.mkdir(exist_ok=True)
    (results / "retention.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
