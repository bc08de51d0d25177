"""`db upgrade` and `db status`: the database schema; `db prune`: retention by hand."""

from __future__ import annotations

import argparse
from typing import Any

from webhook_app.cli.common import add_command_group, load_settings, require_database


def cmd_db(args: argparse.Namespace) -> int:
    from webhook_app.store import SCHEMA_VERSION, open_store

    settings = load_settings()
    if args.db_command != "upgrade":
        require_database(settings)  # `db status` reads only: a mistyped path makes nothing
    store = open_store(settings.database_url, timeout=settings.db_timeout)
    try:
        if args.db_command == "upgrade":
            before = store.schema_version()
            after = store.migrate()
            print(f"database schema: version {before} -> {after}")
            return 0
        found = store.schema_version()
        print(
            f"database schema: version {found}, code needs {SCHEMA_VERSION}"
            + ("" if found == SCHEMA_VERSION else " (run `webhook-app db upgrade`)")
        )
        return 0 if found == SCHEMA_VERSION else 1
    finally:
        store.close()


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune what the retention settings say is due now (the worker does the same every
    WEBHOOK_APP_PRUNE_INTERVAL); `--dry-run` counts the first batch only; `--vacuum` rewrites a
    SQLite file made before incremental vacuum was switched on."""
    import time

    from webhook_app.cli.common import open_checked_store
    from webhook_app.store import retention

    settings = load_settings()
    store = open_checked_store(settings)
    try:
        before = store.storage_stats()
        if args.dry_run:
            r = retention.prune(store, settings, now=time.time(), dry_run=True)
            print(
                f"would remove {r.bodies} bodies and {r.deliveries} deliveries in the first batch"
                f" (batches of {settings.prune_batch}); database {before.bytes} bytes"
            )
            return 0
        r = retention.prune_and_record(store, settings, now=time.time(), by="db prune")
        vacuum = getattr(store, "vacuum", None)
        if args.vacuum and vacuum is not None:
            vacuum()
        after = store.storage_stats()
        print(
            f"removed {r.bodies} bodies and {r.deliveries} deliveries; database {before.bytes} -> {after.bytes} bytes"
        )
        return 0
    finally:
        store.close()


def register(sub: Any) -> None:
    dsub = add_command_group(sub, "db", help="database schema and retention")
    for name, text in (("upgrade", "create or upgrade the schema"), ("status", "show the schema version")):
        dsub.add_parser(name, help=text).set_defaults(func=cmd_db)
    pr = dsub.add_parser("prune", help="remove what is past the retention periods now")
    pr.add_argument("--dry-run", action="store_true", help="count, change nothing")
    pr.add_argument("--vacuum", action="store_true", help="SQLite: rewrite the file afterwards (once, for old files)")
    pr.set_defaults(func=cmd_prune)
