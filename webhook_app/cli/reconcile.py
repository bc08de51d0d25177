"""`reconcile --since`: queue orders Commerce Layer has that never reached us (`webhook_app.ops.reconcile`)."""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from typing import Any

from webhook_app.cli.common import (
    add_org_argument,
    commerce_layer_client,
    load_organization_for,
    open_checked_store,
    since_arg,
)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from webhook_app.ops.reconcile import reconcile
    from webhook_app.policy import load_policy

    settings, organization = load_organization_for(args)  # agency mode: --org SLUG's API, queued under it
    policy = load_policy(settings.policy_path)
    with closing(commerce_layer_client(settings)) as client, closing(open_checked_store(settings)) as store:
        result = reconcile(
            client,
            store,
            policy,
            since=args.since,
            until=args.until,
            dry_run=args.dry_run,
            organization=organization,
        )
    for order_id in result.missing:
        print(order_id)
    verb = "would be queued" if args.dry_run else "queued"
    print(
        f"listed {result.listed} orders; {len(result.missing)} had no delivery here; "
        f"{len(result.queued) if not args.dry_run else len(result.missing)} {verb}",
        file=sys.stderr,
    )
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("reconcile", help="queue orders Commerce Layer has that never reached us")
    sp.add_argument("--since", required=True, type=since_arg, help="orders updated since: 24h, 2d or an ISO 8601 time")
    sp.add_argument("--until", type=since_arg, help="and before this")
    sp.add_argument("--dry-run", action="store_true", help="list them, queue nothing")
    add_org_argument(sp)
    sp.set_defaults(func=cmd_reconcile)
