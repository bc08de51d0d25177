"""`wallet duplicates`: customers with several wallet entries for one card; `--delete-extra` cleans up.
`wallet expired`: entries whose card has expired (or will soon); `--delete --yes` removes the expired
ones (`webhook_app.ops.wallet_hygiene`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any, TextIO

from webhook_app.cli.common import (
    add_command_group,
    add_org_argument,
    commerce_layer_client,
    fail,
    load_organization_for,
    open_checked_store,
    since_arg,
)


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
    from webhook_app.ops.wallet_hygiene import delete_entries, find_duplicates
    from webhook_app.policy import load_policy

    if args.yes and not args.delete_extra:
        return fail("--yes only confirms --delete-extra")
    settings, organization = load_organization_for(args)  # agency mode: --org SLUG's wallets
    policy = load_policy(settings.policy_path)
    progress = bar(sys.stderr)
    with closing(commerce_layer_client(settings)) as client:
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

        def delete() -> None:
            with closing(open_checked_store(settings)) as store:
                delete_entries(client, store, report, clock=time.time, progress=progress, organization=organization)

        return _delete_confirmed(summary, report.extra, report.deleted, delete, asked=args.delete_extra, yes=args.yes)


def cmd_expired(args: argparse.Namespace) -> int:
    from webhook_app.errors import CommerceLayerError
    from webhook_app.ops.wallet_hygiene import (
        EXPIRED,
        EXPIRING,
        UNKNOWN,
        delete_entries,
        find_expired,
        record_scan,
    )

    if args.yes and not args.delete:
        return fail("--yes only confirms --delete")
    if args.within < 0 or args.within > 3660:
        return fail("--within takes a number of days from 0 to 3660")
    settings, organization = load_organization_for(args)  # agency mode: --org SLUG's wallets
    progress = bar(sys.stderr)
    # each scan and deletion goes into the operations log
    with closing(open_checked_store(settings)) as store, closing(commerce_layer_client(settings)) as client:
        try:
            report = find_expired(
                client, now=time.time(), within_days=args.within, customer_id=args.customer, progress=progress
            )
        except CommerceLayerError as exc:
            return fail(f"reading the wallets: {exc}")
        record_scan(store, report, customer_id=args.customer, now=time.time(), organization=organization)
        for e in report.entries:
            if args.json:
                print(
                    json.dumps(
                        {
                            "id": e.id,
                            "customer_id": e.customer_id,
                            "state": e.state,
                            "card_expiry": str(e.expiry) if e.expiry else None,
                            "market_id": e.market_id,
                            "payment_source": e.source,
                            "name": e.name,
                        }
                    )
                )
            else:
                when = f" {e.expiry}" if e.expiry else ""
                market = f", market {e.market_id}" if e.market_id else ""
                print(f"customer {e.customer_id}: {e.id} {e.name or 'entry'}: {e.state}{when}{market}")
        expired = len(report.having(EXPIRED))
        summary = (
            f"{report.scanned} wallet entries of {report.customers} customers read at {report.at}; "
            f"{expired} expired, {len(report.having(EXPIRING))} expiring within {report.within_days} days, "
            f"{len(report.having(UNKNOWN))} with an unknown expiry"
        )

        def delete() -> None:
            delete_entries(client, store, report, clock=time.time, progress=progress, organization=organization)

        return _delete_confirmed(summary, expired, report.deleted, delete, asked=args.delete, yes=args.yes)


def _delete_confirmed(
    summary: str, count: int, deleted: list[str], delete: Callable[[], None], *, asked: bool, yes: bool
) -> int:
    """A wallet command's end: the summary, and with its delete option the `count` entries deleted
    by `delete` if `--yes` confirms it (else a dry run), `deleted` counting them, even before an error."""
    from webhook_app.errors import CommerceLayerError

    if not asked or not count:
        print(summary, file=sys.stderr)
        return 0
    if not yes:
        print(f"{summary}; dry run: {count} would be deleted (add --yes)", file=sys.stderr)
        return 0
    try:
        delete()
    except CommerceLayerError as exc:
        print(f"{summary}; {len(deleted)} deleted before the error", file=sys.stderr)
        return fail(f"deleting wallet entries: {exc}")
    print(f"{summary}; {len(deleted)} deleted (recorded as wallet_entry_deleted)", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    wsub = add_command_group(sub, "wallet", help="wallet hygiene: duplicate entries for one card, expired cards")
    sp = wsub.add_parser("duplicates", help="list customers with more than one wallet entry for the same card")
    sp.add_argument("--customer", default=None, metavar="ID", help="only this customer's wallet")
    sp.add_argument(
        "--since", type=since_arg, default=None, help="only cards with an entry created since: 24h, 7d or ISO 8601"
    )
    sp.add_argument("--json", action="store_true", help="one JSON object per card")
    sp.add_argument("--delete-extra", action="store_true", help="keep the oldest entry per card, delete the others")
    sp.add_argument("--yes", action="store_true", help="really delete (without it --delete-extra is a dry run)")
    add_org_argument(sp)
    sp.set_defaults(func=cmd_duplicates)
    sp = wsub.add_parser("expired", help="list wallet entries whose card has expired (or will within --within days)")
    sp.add_argument("--customer", default=None, metavar="ID", help="only this customer's wallet")
    sp.add_argument(
        "--within", type=int, default=0, metavar="DAYS", help="also list cards that expire within DAYS (never deleted)"
    )
    sp.add_argument("--json", action="store_true", help="one JSON object per entry")
    sp.add_argument("--delete", action="store_true", help="delete the entries whose card has expired")
    sp.add_argument("--yes", action="store_true", help="really delete (without it --delete is a dry run)")
    add_org_argument(sp)
    sp.set_defaults(func=cmd_expired)
