"""`serve`, `web` and `worker`: the service's processes (see `webhook_app.runtime`)."""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import shutil
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from webhook_app import __version__
from webhook_app.cli.common import load_settings, prepare_store
from webhook_app.config import DEFAULT_BIND, Settings
from webhook_app.errors import UsageError
from webhook_app.logs import mask_url

if TYPE_CHECKING:
    from webhook_app.organizations import Organizations
    from webhook_app.policy import Policy

log = logging.getLogger(__name__)


def metrics_dir(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run `command` with prometheus_client's multiprocess directory set before anything imports
    it (runtime.prepare_metrics_dir: shared by the command's children), and remove the directory
    when the command ends if this process made it (not one PROMETHEUS_MULTIPROC_DIR names, nor
    from a gunicorn worker, forked inside run_web, unwinding through here)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from webhook_app.runtime import prepare_metrics_dir

        given = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        path = prepare_metrics_dir()
        owner = os.getpid()
        try:
            return command(args)
        finally:
            if not given and os.getpid() == owner:
                shutil.rmtree(path, ignore_errors=True)

    return run


def _settings_to_start() -> tuple[Settings, Organizations]:
    """What `serve` and `web` check before they start: the settings, the policy (its warnings
    printed), the organizations and the store (SQLite created or upgraded)."""
    from webhook_app.organizations import load_organizations
    from webhook_app.policy import load_policy

    settings = load_settings()
    warn_policy(load_policy(settings.policy_path))
    orgs = load_organizations(settings)  # a mistake in WEBHOOK_APP_ORGANIZATIONS stops it here, in one line
    prepare_store(settings)
    return settings, orgs


@metrics_dir
def cmd_serve(args: argparse.Namespace) -> int:
    from webhook_app.runtime import run_serve

    settings, orgs = _settings_to_start()
    bind = args.bind or DEFAULT_BIND
    check_can_listen(bind)
    # The operator address too, before the banner says `listening on` (runtime.open_listeners).
    port = int(bind.rpartition(":")[2])
    if settings.operator_bind not in ("off", "public") and (settings.operator_bind or port):
        check_can_listen(settings.operator_bind or f"127.0.0.1:{port + 1}", "WEBHOOK_APP_OPERATOR_BIND")
    announce(settings, bind, orgs)
    return run_serve(bind=args.bind, workers=args.workers, operator_bind=settings.operator_bind)


@metrics_dir
def cmd_web(args: argparse.Namespace) -> int:
    from webhook_app.runtime import run_web

    settings, orgs = _settings_to_start()
    if args.bind or not args.config:  # else the config file's `bind`, which gunicorn checks
        check_can_listen(args.bind or DEFAULT_BIND)
    for reason in settings.not_ready_reasons() + orgs.not_ready_reasons():  # `web` has no banner: its log says it once
        log.error("not ready: %s", reason)
    return run_web(settings, bind=args.bind, workers=args.workers, config_file=args.config)


@metrics_dir
def cmd_worker(args: argparse.Namespace) -> int:
    from webhook_app.organizations import load_organizations
    from webhook_app.policy import load_policy
    from webhook_app.runtime import run_worker

    settings = load_settings()
    warn_policy(load_policy(settings.policy_path))
    load_organizations(settings)  # a mistake in WEBHOOK_APP_ORGANIZATIONS stops it here, in one line
    prepare_store(settings)
    if args.metrics_port is not None:  # where serve_worker_metrics listens: in use was a traceback
        check_can_listen(f"0.0.0.0:{args.metrics_port}", "--metrics-port")
    return run_worker(settings, once=args.once, metrics_port=args.metrics_port)


def cmd_commit_writer(_args: argparse.Namespace) -> int:
    from webhook_app.runtime import run_commit_writer

    return run_commit_writer(load_settings())


def bind_arg(*, unix: bool) -> Callable[[str], str]:
    """argparse type for `--bind`: HOST:PORT with a port from 0 to 65535 (`web` also takes
    gunicorn's unix:PATH and fd://N)."""

    def check(value: str) -> str:
        if value.startswith(("unix:", "fd://")):
            if unix:
                return value
            raise argparse.ArgumentTypeError(f"{value!r}: serve listens on HOST:PORT")
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT with a port from 0 to 65535")
        return value

    return check


def check_can_listen(bind: str, flag: str = "--bind") -> None:
    """Bind the address once and let it go, so that an address in use, not of this machine or
    not allowed is one line now (UsageError naming `flag`), not a child's traceback or five
    retries later."""
    if bind.startswith(("unix:", "fd://")):
        return
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or int(port) > 65535:  # the operator's default, the public port + 1
        raise UsageError(f"cannot listen on {bind} ({flag}): not HOST:PORT with a port from 0 to 65535")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {bind} ({flag}): unknown host {host!r} ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn and the front do
        try:
            s.bind(addr)
        except OSError as exc:
            why = {
                errno.EADDRINUSE: "the address is in use (another process listens there): stop it or use another port",
                errno.EADDRNOTAVAIL: "no network interface of this machine has that address: use 127.0.0.1 or 0.0.0.0",
                errno.EACCES: "permission denied (ports below 1024 need privileges): choose a port above 1023",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise UsageError(f"cannot listen on {bind} ({flag}): {why}") from None


def warn_policy(policy: Policy) -> None:
    """Log what in the policy cannot work (a save on a topic where the gateway refuses it)."""
    for warning in policy.warnings() + policy.never_acting():
        log.warning("policy warning: %s", warning, extra={"policy": policy.source})
    if not policy.acts():
        log.warning("policy warning: it can never save or reuse a payment source", extra={"policy": policy.source})


def announce(settings: Settings, bind: str, orgs: Organizations | None = None) -> None:
    if orgs is not None and orgs.agency:
        announce_agency(settings, bind, orgs)
        return
    mode = settings.mode + ("" if settings.has_credentials else " (no Commerce Layer credentials set)")
    secrets = "; ".join(f"NOT READY: {r}" for r in settings.not_ready_reasons()) or ", ".join(
        s.label for s in settings.webhook_secrets
    )
    print(
        f"webhook-app {__version__}: listening on http://{bind}/webhooks/commercelayer\n"
        f"  mode: {mode}\n  database: {mask_url(settings.database_url)}\n"
        f"  policy: {settings.policy_path}\n  webhook secrets: {secrets}",
        file=sys.stderr,
    )


def announce_agency(settings: Settings, bind: str, orgs: Organizations) -> None:
    """Agency mode: each organization's path, mode, policy and secrets (the deployment-wide
    `CL_*`, policy and mode describe none of them)."""
    lines = [
        f"webhook-app {__version__}: listening on http://{bind}, agency mode: {len(orgs)} organizations"
        f" ({settings.organizations_path})",
        f"  database: {mask_url(settings.database_url)}",
    ]
    for org in orgs:
        secrets = f"{len(org.secrets)}" if org.secrets else "NOT READY: none, every delivery is refused with 401"
        lines.append(
            f"  {org.slug}: /webhooks/commercelayer/{org.slug}  mode: {org.mode}  policy: {org.policy_path}"
            f"  webhook secrets: {secrets}"
        )
    print("\n".join(lines), file=sys.stderr)


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type for a whole number from `low` to `high` (`--workers 0` was 4 workers in
    silence, `-2` a gunicorn that `serve` restarted forever under its `listening on` banner)."""

    def check(value: str) -> int:
        n = int(value) if value.strip().lstrip("-").isdigit() else None
        if n is None or n < low or (high is not None and n > high):
            within = f"from {low} to {high}" if high is not None else f"of {low} or more"
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number {within}")
        return n

    return check


def register(sub: Any) -> None:
    def bind_args(sp: argparse.ArgumentParser, *, unix: bool = False) -> None:
        sp.add_argument(
            "--bind",
            default=None,
            type=bind_arg(unix=unix),
            metavar="HOST:PORT",
            help=f"address to listen on ({DEFAULT_BIND})",
        )
        sp.add_argument(
            "--workers",
            type=whole_number(1),
            default=None,
            help="gunicorn worker processes (default WEBHOOK_APP_WEB_WORKERS, 4)",
        )

    sp = sub.add_parser("serve", help="run the web server and the worker together")
    bind_args(sp)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("web", help="run the web server (gunicorn) only")
    bind_args(sp, unix=True)
    sp.add_argument("--config", default=None, metavar="FILE", help="a gunicorn config file (deploy/gunicorn.conf.py)")
    sp.set_defaults(func=cmd_web)

    sp = sub.add_parser(
        "commit-writer", help="the group-commit writer `web` starts beside its workers (not run by hand)"
    )
    sp.set_defaults(func=cmd_commit_writer)

    sp = sub.add_parser("worker", help="run the worker only")
    sp.add_argument("--once", action="store_true", help="process the jobs that are due, then exit")
    sp.add_argument(
        "--metrics-port",
        type=whole_number(1, 65535),
        default=None,
        metavar="PORT",
        help="serve this worker's Prometheus metrics on PORT (when no web instance shares its host)",
    )
    sp.set_defaults(func=cmd_worker)
