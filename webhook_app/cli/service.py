"""`serve`, `web` and `worker`: the service's processes (see `webhook_app.runtime`)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from webhook_app import __version__
from webhook_app.cli.common import load_settings, prepare_store
from webhook_app.config import Settings
from webhook_app.logs import mask_url

if TYPE_CHECKING:
    from webhook_app.policy import Policy

log = logging.getLogger(__name__)


def cmd_serve(args: argparse.Namespace) -> int:
    from webhook_app.policy import load_policy
    from webhook_app.runtime import prepare_metrics_dir, run_serve

    prepare_metrics_dir()  # shared by the web and worker children
    settings = load_settings()
    warn_policy(load_policy(settings.policy_path))
    prepare_store(settings)
    announce(settings, args.bind or "127.0.0.1:8000")
    return run_serve(bind=args.bind, workers=args.workers, operator_bind=settings.operator_bind)


def cmd_web(args: argparse.Namespace) -> int:
    from webhook_app.policy import load_policy
    from webhook_app.runtime import prepare_metrics_dir, run_web

    prepare_metrics_dir()
    settings = load_settings()
    warn_policy(load_policy(settings.policy_path))
    prepare_store(settings)
    return run_web(settings, bind=args.bind, workers=args.workers, config_file=args.config)


def cmd_worker(args: argparse.Namespace) -> int:
    from webhook_app.policy import load_policy
    from webhook_app.runtime import prepare_metrics_dir, run_worker

    prepare_metrics_dir()
    settings = load_settings()
    warn_policy(load_policy(settings.policy_path))
    prepare_store(settings)
    return run_worker(settings, once=args.once, metrics_port=args.metrics_port)


def cmd_commit_writer(_args: argparse.Namespace) -> int:
    from webhook_app.runtime import run_commit_writer

    return run_commit_writer(load_settings())


def warn_policy(policy: Policy) -> None:
    """Log what in the policy cannot work (a save on a topic where the gateway refuses it)."""
    for warning in policy.warnings():
        log.warning("policy warning: %s", warning, extra={"policy": policy.source})


def announce(settings: Settings, bind: str) -> None:
    mode = settings.mode + ("" if settings.has_credentials else " (no Commerce Layer credentials set)")
    secrets = ", ".join(s.label for s in settings.webhook_secrets) or "NONE: every delivery will be refused"
    print(
        f"webhook-app {__version__}: listening on http://{bind}/webhooks/commercelayer\n"
        f"  mode: {mode}\n  database: {mask_url(settings.database_url)}\n"
        f"  policy: {settings.policy_path}\n  webhook secrets: {secrets}",
        file=sys.stderr,
    )


def register(sub: Any) -> None:
    def bind_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--bind", default=None, metavar="HOST:PORT", help="address to listen on (127.0.0.1:8000)")
        sp.add_argument(
            "--workers", type=int, default=None, help="gunicorn worker processes (default WEBHOOK_APP_WEB_WORKERS, 4)"
        )

    sp = sub.add_parser("serve", help="run the web server and the worker together")
    bind_args(sp)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("web", help="run the web server (gunicorn) only")
    bind_args(sp)
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
        type=int,
        default=None,
        metavar="PORT",
        help="serve this worker's Prometheus metrics on PORT (when no web instance shares its host)",
    )
    sp.set_defaults(func=cmd_worker)
