"""What every command shares: settings, the store, the Commerce Layer client, filters, failures.

A command reports a problem as one line on stderr with exit status 2 (`fail`, or by raising
`UsageError` / any `WebhookAppError`, which `cli.main` turns into that line); never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from webhook_app.config import Settings
from webhook_app.errors import ConfigError, StoreUnavailable, UsageError, WebhookAppError
from webhook_app.logs import configure_logging, settings_secrets
from webhook_app.timefmt import parse_since

if TYPE_CHECKING:
    from webhook_app.commercelayer.client import CommerceLayerClient
    from webhook_app.store import DeliveryFilter, Store

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (exit status 2) like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"webhook-app: {message}", file=sys.stderr)
    return code


def load_settings() -> Settings:
    """Settings from the environment, and JSON logs scrubbed of every secret they hold."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, secrets=settings_secrets(settings))
    return settings


def load_settings_for(args: argparse.Namespace) -> Settings:
    """The settings as the organization `--org SLUG` names sees them (agency mode: its
    credentials, API, policy and mode); without agency mode and `--org`, `load_settings()`."""
    return load_organization_for(args)[0]


def load_organization_for(args: argparse.Namespace) -> tuple[Settings, str]:
    """`load_settings_for`, and the slug of the organization `--org` picked ("" for the implicit
    one): what a command stores (a backfill's deliveries, an operation) goes under it."""
    from webhook_app.organizations import IMPLICIT, load_organizations

    settings = load_settings()
    slug = getattr(args, "org", None)
    if settings.organizations_path is None and slug is None:
        return settings, IMPLICIT
    org = load_organizations(settings).pick(slug)
    return org.settings(settings), org.slug


def webhook_secrets_name(args: argparse.Namespace) -> str:
    """Where the organization `--org` names takes its webhook secrets, as the operator is told to
    set them: `CL_WEBHOOK_SECRETS`, or in agency mode its `webhook_secrets_env` variable (or
    file). A mistake in the settings is left to the command to report."""
    from webhook_app.organizations import load_organizations

    try:
        settings = load_settings()
        if settings.organizations_path is None and getattr(args, "org", None) is None:
            return "CL_WEBHOOK_SECRETS"
        return load_organizations(settings).pick(getattr(args, "org", None)).secrets_source
    except WebhookAppError:
        return "CL_WEBHOOK_SECRETS"


def stored_organization(args: argparse.Namespace, settings: Settings) -> str | None:
    """For commands that read stored data only (`replay`, `forget`): the organization whose rows
    `--org SLUG` names (`default`: the implicit one's, ""), configured or not, so that a removed
    organization's data stays reachable; None (every row) without agency mode and `--org`. In
    agency mode `--org` is needed: ConfigError, one line naming the organizations."""
    from webhook_app.organizations import IMPLICIT, SLUG, load_organizations

    slug: str | None = getattr(args, "org", None)
    if slug is None:
        if settings.organizations_path is None:
            return None
        return load_organizations(settings).pick(None).slug  # several: the line naming them
    if slug == "default":
        return IMPLICIT
    if not SLUG.match(slug):
        raise ConfigError("--org", "an organization slug (lowercase letters, digits and dashes), or default")
    return slug


def add_command_group(sub: Any, name: str, *, help: str) -> Any:
    """Add `webhook-app NAME SUBCOMMAND ...` to the CLI's subparsers; returns the group's own subparsers
    (the subcommand chosen is `args.NAME_command`)."""
    group = sub.add_parser(name, help=help)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="SUBCOMMAND")


def add_org_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org", metavar="SLUG", help="agency mode: the organization (WEBHOOK_APP_ORGANIZATIONS)")


def require_database(settings: Settings) -> None:
    """A SQLite database must exist already for a command that does not make one (they all
    check the schema): a mistyped path is "no database at PATH", not an empty file (and
    directory) made there, then "version 0"."""
    url = settings.database_url
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///")).expanduser()
    if str(path) != ":memory:" and not path.exists():
        raise StoreUnavailable(
            f"no database at {path}: check WEBHOOK_APP_DATABASE_URL (`serve`, `web`, `worker` and"
            " `db upgrade` create it)"
        )


def open_checked_store(settings: Settings) -> Store:
    """The configured store, refusing to run on a schema this code does not know (or, SQLite,
    on no database file: nothing is created)."""
    from webhook_app.store import open_store

    require_database(settings)
    store = open_store(settings.database_url, timeout=settings.db_timeout)
    try:
        store.check_schema()
    except BaseException:
        store.close()
        raise
    return store


def prepare_store(settings: Settings) -> None:
    """SQLite (embedded) is created and upgraded in place; PostgreSQL must be upgraded explicitly."""
    from webhook_app.store import open_store

    store = open_store(settings.database_url, timeout=settings.db_timeout)
    try:
        if settings.database_url.startswith("sqlite:///"):
            store.migrate()
        store.check_schema()
    finally:
        store.close()


def commerce_layer_client(settings: Settings) -> CommerceLayerClient:
    from webhook_app.commercelayer.client import CommerceLayerClient

    if not settings.has_credentials:
        raise ConfigError(
            "CL_CLIENT_ID", "this command calls Commerce Layer: set CL_CLIENT_ID, CL_CLIENT_SECRET and CL_API_BASE"
        )
    return CommerceLayerClient.from_settings(settings)


def since_arg(value: str) -> float:
    """argparse type for `--since`/`--until`: `24h`, `30m`, `7d` or an ISO 8601 time."""
    try:
        return parse_since(value, now=time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--since", type=since_arg, help="received since: 24h, 30m, 7d or an ISO 8601 time")
    sp.add_argument("--until", type=since_arg, help="received before: a duration ago or an ISO 8601 time")
    sp.add_argument("--topic", help="only this topic")
    sp.add_argument("--order-id", help="only this order")
    sp.add_argument("--decision", help="only deliveries whose latest decision has this action, outcome or rule")
    sp.add_argument("--limit", type=int, default=100_000, help="at most this many deliveries (newest)")


def delivery_filter(args: argparse.Namespace) -> DeliveryFilter:
    from webhook_app.store import DeliveryFilter

    return DeliveryFilter(
        topic=args.topic,
        order_id=args.order_id,
        decision=args.decision,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )


def is_stdin(name: str | None) -> bool:
    """`-`, the usual name for standard input."""
    return name == "-"


def read_input(name: str) -> bytes:
    """A file's bytes, or standard input for `-`; a missing file is a UsageError, not a traceback."""
    if is_stdin(name):
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"{name}: cannot read: {exc.strerror}") from None


def add_secret_args(sp: argparse.ArgumentParser, what: str) -> None:
    """`--secret-env VAR` / `--secret-file PATH` (`-`: standard input), so that a secret is never
    an argument: every local user can read a process's arguments (`ps`, /proc/PID/cmdline)."""
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--secret-env", metavar="VAR", help=f"read {what} from the environment variable VAR")
    g.add_argument(
        "--secret-file",
        metavar="PATH",
        help=f"read {what} from the file PATH, or from standard input for - (a final newline is dropped)",
    )
    g.add_argument("--secret", help=argparse.SUPPRESS)  # refused with the reason (read_secret)


def read_secret(args: argparse.Namespace, what: str) -> str:
    """The secret `add_secret_args` options name; UsageError if none or if given as `--secret`."""
    if getattr(args, "secret", None) is not None:
        raise UsageError(
            "--secret puts the secret on the command line, where every user of this machine can read it"
            " (ps): use --secret-env VAR or --secret-file PATH (- for standard input)"
        )
    if args.secret_env:
        secret = os.environ.get(args.secret_env, "")
        if not secret:
            raise UsageError(f"--secret-env {args.secret_env}: that variable is not set or empty")
        return secret
    if args.secret_file:
        try:
            raw = sys.stdin.read() if is_stdin(args.secret_file) else Path(args.secret_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--secret-file {args.secret_file}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--secret-file {args.secret_file}: not UTF-8 text") from None
        secret = raw.removesuffix("\n").removesuffix("\r")
        if not secret:
            raise UsageError(f"--secret-file {args.secret_file}: empty")
        return secret
    raise UsageError(f"{what} is needed: --secret-env VAR or --secret-file PATH (- for standard input)")


def utc_stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
