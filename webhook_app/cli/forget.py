"""`forget --customer ID` / `--email ADDRESS`: erase a customer's stored bodies and headers."""

from __future__ import annotations

import argparse
import time
from typing import Any

from webhook_app.cli.common import add_org_argument, fail, load_settings, open_checked_store, stored_organization


def cmd_forget(args: argparse.Namespace) -> int:
    from webhook_app.ops import privacy

    if not args.customer and not args.email:
        return fail("forget: give --customer ID or --email ADDRESS")
    settings = load_settings()
    organization = stored_organization(args, settings)  # agency mode: a customer is one organization's
    store = open_checked_store(settings)
    try:
        now = time.time()
        result = privacy.forget_customer(
            store, customer_id=args.customer, email=args.email, now=now, organization=organization
        )
        privacy.record(
            store,
            result,
            by_id=bool(args.customer),
            by_email=bool(args.email),
            now=now,
            organization=organization or "",
        )
        print(f"removed the body and headers of {result.removed} deliveries ({result.scanned} stored bodies read)")
        return 0
    finally:
        store.close()


def register(sub: Any) -> None:
    sp = sub.add_parser("forget", help="erase a customer's stored bodies and headers (anonymization requests)")
    sp.add_argument("--customer", metavar="ID", help="the Commerce Layer customer id")
    sp.add_argument("--email", metavar="ADDRESS", help="the customer's email address")
    add_org_argument(sp)
    sp.set_defaults(func=cmd_forget)
