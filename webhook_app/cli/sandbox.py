"""`webhook-app sandbox`: hands over to the separate `commercelayer-sandbox` distribution.

The sandbox is a test tool and not part of the service (nor of its image); this entry only runs
it where it is installed, and otherwise says in one line how to install it."""

from __future__ import annotations

import argparse
from typing import Any

from webhook_app.cli.common import fail


def register(sub: Any) -> None:
    try:
        from commercelayer_sandbox import cli as sandbox_cli
    except ImportError:
        sp = sub.add_parser(
            "sandbox", help="run the Commerce Layer double (needs `pip install ./sandbox`)", add_help=False
        )
        sp.set_defaults(func=_missing, accepts_any_arguments=True)
        return
    sandbox_cli.register(sub).set_defaults(func=sandbox_cli.run)


def _missing(_args: argparse.Namespace) -> int:
    return fail(
        "the sandbox is a separate distribution: install it with `pip install ./sandbox` "
        "(from a checkout of webhook-app), then run `commercelayer-sandbox`"
    )
