"""The `webhook-app` command: one module per command group, `common` for what they share.

    service   serve | web | worker          policy     policy check | policy diff
    sign      sign                          db         db upgrade | db status | db prune
    forget    forget --customer | --email
    replay    replay                        reconcile  reconcile
    trigger   trigger --order --topic | --event
    webhooks  webhooks register | status    admin      admin-token
    wallet    wallet duplicates | expired    doctor     doctor --callback-url URL
    sandbox   hands over to commercelayer-sandbox

Every command reads its settings once with `Settings.from_env()`; a bad setting, policy, file or
argument is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from webhook_app import __version__
from webhook_app.errors import ConfigError, PolicyError, StoreError, WebhookAppError


def _groups() -> tuple[ModuleType, ...]:
    """The command groups, in the order `--help` lists them. Imported here, not at the top, so that
    `--version` (answered before the parser is built) loads none of them. They import their heavy
    modules (Flask, requests, the store, the sandbox's server) in the functions that run a command,
    so `--help` loads none of those either."""
    from webhook_app.cli import (
        admin,
        db,
        doctor,
        forget,
        policy,
        reconcile,
        replay,
        sandbox,
        service,
        sign,
        trigger,
        wallet,
        webhooks,
    )

    return (service, sign, policy, db, forget, replay, reconcile, webhooks, wallet, trigger, doctor, admin, sandbox)


def build_parser() -> argparse.ArgumentParser:
    from webhook_app.cli.common import Parser

    p = Parser(prog="webhook-app", description="Commerce Layer webhook receiver.")
    p.add_argument(
        "--version",
        action="version",
        version=f"webhook-app {__version__}",
        help="print the version and exit (answered before any command is loaded, so without delay)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _groups():
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_given = sys.argv[1:] if argv is None else list(argv)
    if args_given[:1] == ["--version"]:
        # The same line argparse's version action prints, without building the parser.
        print(f"webhook-app {__version__}")
        return 0
    from webhook_app.cli.common import fail

    parser = build_parser()
    args, unknown = parser.parse_known_args(args_given)
    if unknown and not getattr(args, "accepts_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        return fail(f"configuration error: {exc}")
    except PolicyError as exc:
        return fail(f"invalid policy: {exc}")
    except StoreError as exc:
        return fail(f"database: {exc}")
    except WebhookAppError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
