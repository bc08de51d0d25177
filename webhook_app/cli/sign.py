"""`sign`: print the `X-CommerceLayer-Signature` value for a body (to try the intake by hand)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from webhook_app.cli.common import fail, read_input


def cmd_sign(args: argparse.Namespace) -> int:
    from webhook_app.signing import sign

    secret = args.secret if args.secret is not None else os.environ.get(args.secret_env or "", "")
    if not secret:
        return fail("sign needs --secret S or --secret-env VAR naming a set variable")
    print(sign(read_input(args.file), secret=secret))
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("sign", help="print the X-CommerceLayer-Signature value for a body")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--secret", default=None, help="the webhook's shared secret")
    g.add_argument("--secret-env", default=None, metavar="VAR", help="read the secret from this variable")
    sp.add_argument("file", help="the raw body (- for standard input)")
    sp.set_defaults(func=cmd_sign)
