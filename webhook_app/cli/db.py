"""`db upgrade` and `db status`: the database schema."""

from __future__ import annotations

import argparse
from typing import Any

from webhook_app.cli.common import load_settings


def cmd_db(args: argparse.Namespace) -> int:
    from webhook_app.store import SCHEMA_VERSION, open_store

    settings = load_settings()
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


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="database schema")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    for name, text in (("upgrade", "create or upgrade the schema"), ("status", "show the schema version")):
        dsub.add_parser(name, help=text).set_defaults(func=cmd_db)
