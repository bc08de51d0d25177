"""`webhook-app admin-token --ttl 1h`: print a new admin token for the admin API and page.

The token is signed with the newest key in WEBHOOK_APP_ADMIN_KEYS (oldest first, newest last)
and is accepted while any listed key verifies it and its time to live has not run out. Only the
token goes to standard output, so `TOKEN=$(webhook-app admin-token)` works; when it expires goes
to standard error.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from webhook_app.cli.common import fail, utc_stamp
from webhook_app.config import Settings
from webhook_app.tokens import ADMIN, Tokens

DEFAULT_TTL = 3600
MAX_TTL = 30 * 86400
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(value: str) -> int:
    """`30m`, `1h`, `2d` or plain seconds -> seconds (1 s to 30 days)."""
    m = re.fullmatch(r"\s*(\d{1,9})\s*([smhd]?)\s*", value.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 30m, 1h, 2d or 900")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if not 1 <= seconds <= MAX_TTL:
        raise argparse.ArgumentTypeError(f"{value!r} is out of range: from 1 second to {MAX_TTL // 86400} days")
    return seconds


def register(subparsers: Any) -> None:
    """Add the `admin-token` subcommand to the CLI's subparsers."""
    sp = subparsers.add_parser(
        "admin-token",
        help="print a new admin token for the admin API and page",
        description="Print a token for `Authorization: Bearer ...` and the /admin/ login form, "
        "signed with the newest key in WEBHOOK_APP_ADMIN_KEYS.",
    )
    sp.add_argument(
        "--ttl",
        type=parse_ttl,
        default=DEFAULT_TTL,
        metavar="DURATION",
        help="how long the token is valid: 30m, 1h, 2d or seconds (default 1h, at most 30d)",
    )
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if not settings.admin_keys:
        return fail(
            "no admin keys configured: set WEBHOOK_APP_ADMIN_KEYS "
            "(comma-separated, newest last, at least 16 characters each)"
        )
    tokens = Tokens(ADMIN, settings.admin_keys)
    token = tokens.make(ttl=args.ttl)
    print(token)
    print(f"webhook-app: admin token valid until {utc_stamp(tokens.clock() + args.ttl)}", file=sys.stderr)
    return 0
