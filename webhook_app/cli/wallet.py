"""`wallet duplicates`: customers with several wallet entries for one card; `--delete-extra` cleans up
(`webhook_app.ops.wallet_hygiene`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from webhook_app.cli.common import commerce_layer_client, fail, load_settings, open_checked_store, since_arg


def bar(out: TextIO) -> Any:
    """A plain-text progress bar on `out`: redrawn in place on a terminal, one final line otherwise."""

    def show(what: str, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        if out.isatty() or done >= total:
            out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what}{end}")
            out.flush()

    return show


def cmd_duplicates(args: argparse.Namespace) -> int:
    from webhook_app.errors import CommerceLayerError
    from webhook_app.ops.wallet_hygiene import delete_extra, find_duplicates
    from webhook_app.policy import load_policy

    if args.yes and not args.delete_extra:
        return fail("--yes only confirms --delete-extra")
    settings = load_settings()
    policy = load_policy(settings.policy_path)
    progress = bar(sys.stderr)
    client = commerce_layer_client(settings)
    try:
        try:
            report = find_duplicates(
                client, keys=policy.wallet_match, customer_id=args.customer, since=args.since, progress=progress
            )
        except CommerceLayerError as exc:
            return fail(f"reading the wallets: {exc}")
        for g in report.groups:
            if args.json:
                print(
                    json.dumps(
                        {
                            "customer_id": g.customer_id,
                            "keep": g.keep.id,
                            "extra": [e.id for e in g.extra],
                            "matched_by": g.how,
                            "name": g.keep.name,
                        }
                    )
                )
            else:
                extra = ", ".join(e.id for e in g.extra)
                print(f"customer {g.customer_id}: {g.keep.name or 'entry'}: keep {g.keep.id}, extra {extra} ({g.how})")
        summary = (
            f"{report.scanned} wallet entries of {report.customers} customers read; "
            f"{len({g.customer_id for g in report.groups})} customers with duplicates, "
            f"{len(report.groups)} cards, {report.extra} extra entries"
        )
        if not args.delete_extra or not report.extra:
            print(summary, file=sys.stderr)
            return 0
        if not args.yes:
            print(f"{summary}; dry run: {report.extra} would be deleted (add --yes)", file=sys.stderr)
            return 0
        store = open_checked_store(settings)
        try:
            delete_extra(client, store, report, clock=time.time, progress=progress)
        except CommerceLayerError as exc:
            print(f"{summary}; {len(report.deleted)} deleted before the error", file=sys.stderr)
            return fail(f"deleting wallet entries: {exc}")
        finally:
            store.close()
        print(f"{summary}; {len(report.deleted)} deleted (recorded as wallet_entry_deleted)", file=sys.stderr)
        return 0
    finally:
        client.close()


def register(sub: Any) -> None:
    wl = sub.add_parser("wallet", help="wallet hygiene: duplicate entries for one card")
    wsub = wl.add_subparsers(dest="wallet_command", required=True, metavar="SUBCOMMAND")
    sp = wsub.add_parser("duplicates", help="list customers with more than one wallet entry for the same card")
    sp.add_argument("--customer", default=None, metavar="ID", help="only this customer's wallet")
    sp.add_argument(
        "--since", type=since_arg, default=None, help="only cards with an entry created since: 24h, 7d or ISO 8601"
    )
    sp.add_argument("--json", action="store_true", help="one JSON object per card")
    sp.add_argument("--delete-extra", action="store_true", help="keep the oldest entry per card, delete the others")
    sp.add_argument("--yes", action="store_true", help="really delete (without it --delete-extra is a dry run)")
    sp.set_defaults(func=cmd_duplicates)
