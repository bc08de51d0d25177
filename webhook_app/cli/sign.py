"""`sign`: print the `X-CommerceLayer-Signature` value for a body (to try the intake by hand)."""

from __future__ import annotations

import argparse
from typing import Any

from webhook_app.cli.common import add_secret_args, fail, is_stdin, read_input, read_secret


def cmd_sign(args: argparse.Namespace) -> int:
    from webhook_app.signing import sign

    if is_stdin(args.secret_file) and is_stdin(args.file):
        return fail("sign: the secret and the body cannot both come from standard input")
    secret = read_secret(args, "the webhook's shared secret")
    print(sign(read_input(args.file), secret=secret))
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("sign", help="print the X-CommerceLayer-Signature value for a body")
    add_secret_args(sp, "the webhook's shared secret")
    sp.add_argument("file", help="the raw body (- for standard input)")
    sp.set_defaults(func=cmd_sign)
