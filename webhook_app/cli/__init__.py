"""The `webhook-app` command: serve | web | worker | sign | policy check | db | sandbox.

Every command reads its settings once with `Settings.from_env()`; a bad setting or policy is one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from webhook_app import __version__
from webhook_app.config import Settings
from webhook_app.errors import ConfigError, InvalidPayload, PolicyError, StoreError, WebhookAppError
from webhook_app.logs import configure_logging, settings_secrets

EXIT_USAGE = 2
_TOPIC_IN_NAME = re.compile(r"^([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)(?:\.|$)")


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"webhook-app: {message}", file=sys.stderr)
    return code


def _settings() -> Settings:
    settings = Settings.from_env()
    configure_logging(settings.log_level, secrets=settings_secrets(settings))
    return settings


def _prepare_store(settings: Settings) -> None:
    """SQLite (embedded) is created and upgraded in place; PostgreSQL must be upgraded explicitly."""
    from webhook_app.store import open_store

    store = open_store(settings.database_url, timeout=settings.db_timeout)
    try:
        if settings.database_url.startswith("sqlite:///"):
            store.migrate()
        store.check_schema()
    finally:
        store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    from webhook_app.policy import load_policy
    from webhook_app.server import prepare_metrics_dir, run_serve

    prepare_metrics_dir()  # shared by the web and worker children
    settings = _settings()
    load_policy(settings.policy_path)
    _prepare_store(settings)
    _announce(settings, args.bind or "127.0.0.1:8000")
    return run_serve(bind=args.bind, workers=args.workers)


def cmd_web(args: argparse.Namespace) -> int:
    from webhook_app.policy import load_policy
    from webhook_app.server import prepare_metrics_dir, run_web

    prepare_metrics_dir()
    settings = _settings()
    load_policy(settings.policy_path)
    _prepare_store(settings)
    return run_web(settings, bind=args.bind, workers=args.workers, config_file=args.config)


def cmd_worker(args: argparse.Namespace) -> int:
    from webhook_app.server import prepare_metrics_dir, run_worker

    prepare_metrics_dir()
    settings = _settings()
    _prepare_store(settings)
    return run_worker(settings, once=args.once, metrics_port=args.metrics_port)


def _announce(settings: Settings, bind: str) -> None:
    mode = settings.mode + ("" if settings.has_credentials else " (no Commerce Layer credentials set)")
    secrets = ", ".join(s.label for s in settings.webhook_secrets) or "NONE: every delivery will be refused"
    print(f"webhook-app {__version__}: listening on http://{bind}/webhooks/commercelayer\n"
          f"  mode: {mode}\n  database: {_safe_url(settings.database_url)}\n"
          f"  policy: {settings.policy_path}\n  webhook secrets: {secrets}", file=sys.stderr)


def _safe_url(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", url)


def cmd_sign(args: argparse.Namespace) -> int:
    from webhook_app.signing import sign

    secret = args.secret if args.secret is not None else os.environ.get(args.secret_env or "", "")
    if not secret:
        return _fail("sign needs --secret S or --secret-env VAR naming a set variable")
    body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    print(sign(body, secret=secret))
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from webhook_app.events import Event, check_topic
    from webhook_app.policy import load_policy

    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        return _fail(f"invalid policy: {exc}")
    status = 0
    for name in args.payloads:
        try:
            raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror}", file=sys.stderr)
            status = 1
            continue
        topic = args.topic
        if topic is None:
            m = _TOPIC_IN_NAME.match(Path(name).name)
            topic = m.group(1) if m and m.group(1).startswith("orders.") else "orders.place"
        try:
            event = Event.from_body(check_topic(topic), raw)
        except InvalidPayload as exc:
            print(f"{name}: invalid payload: {exc}", file=sys.stderr)
            status = 1
            continue
        chosen = policy.choose(event)
        d = policy.decide(event)
        if args.json:
            print(json.dumps({"payload": name, "topic": topic, "order_id": event.order_id, "action": d.action,
                              "rule": d.rule, "rule_action": chosen.action, "guard": d.guard, "reason": d.reason,
                              "wallet_entry_id": d.wallet_entry_id}))
        else:
            by = f"guard {d.guard} (rule {d.rule} chose {chosen.action})" if d.guard else f"rule {d.rule}"
            print(f"{name}: {topic} order {event.order_id}: {d.action} by {by}: {d.reason}")
    return status


def cmd_db(args: argparse.Namespace) -> int:
    from webhook_app.store import open_store
    from webhook_app.store.base import SCHEMA_VERSION

    settings = _settings()
    store = open_store(settings.database_url, timeout=settings.db_timeout)
    try:
        if args.db_command == "upgrade":
            before = store.schema_version()
            after = store.migrate()
            print(f"database schema: version {before} -> {after}")
        else:
            found = store.schema_version()
            print(f"database schema: version {found}, code needs {SCHEMA_VERSION}"
                  + ("" if found == SCHEMA_VERSION else " (run `webhook-app db upgrade`)"))
            return 0 if found == SCHEMA_VERSION else 1
    finally:
        store.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="webhook-app", description="Commerce Layer webhook receiver.")
    p.add_argument("--version", action="version", version=f"webhook-app {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def bind_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--bind", default=None, metavar="HOST:PORT", help="address to listen on (127.0.0.1:8000)")
        sp.add_argument("--workers", type=int, default=None, help="gunicorn worker processes "
                        "(default WEBHOOK_APP_WEB_WORKERS, 2)")

    sp = sub.add_parser("serve", help="run the web server and the worker together")
    bind_args(sp)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("web", help="run the web server (gunicorn) only")
    bind_args(sp)
    sp.add_argument("--config", default=None, metavar="FILE", help="a gunicorn config file (deploy/gunicorn.conf.py)")
    sp.set_defaults(func=cmd_web)

    sp = sub.add_parser("worker", help="run the worker only")
    sp.add_argument("--once", action="store_true", help="process the jobs that are due, then exit")
    sp.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                    help="serve this worker's Prometheus metrics on PORT (when no web instance shares its host)")
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser("sign", help="print the X-CommerceLayer-Signature value for a body")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--secret", default=None, help="the webhook's shared secret")
    g.add_argument("--secret-env", default=None, metavar="VAR", help="read the secret from this variable")
    sp.add_argument("file", help="the raw body (- for standard input)")
    sp.set_defaults(func=cmd_sign)

    pol = sub.add_parser("policy", help="work with policy files")
    psub = pol.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    sp = psub.add_parser("check", help="validate a policy and show its decision for payloads")
    sp.add_argument("policy", help="the policy file (TOML)")
    sp.add_argument("payloads", nargs="*", help="webhook bodies (topic taken from the file name, else --topic)")
    sp.add_argument("--topic", default=None, help="the topic for every payload (default from the file name)")
    sp.add_argument("--json", action="store_true", help="one JSON object per payload")
    sp.set_defaults(func=cmd_policy_check)

    db = sub.add_parser("db", help="database schema")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    for name, text in (("upgrade", "create or upgrade the schema"), ("status", "show the schema version")):
        dsub.add_parser(name, help=text).set_defaults(func=cmd_db)

    for register in _plugins():
        register(sub)
    from webhook_app import ops_cli

    ops_cli.register(sub, psub)
    return p


def _plugins() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Commands that live beside their subsystem."""
    from webhook_app import admin_cli

    return [_register_sandbox, admin_cli.register]


def _register_sandbox(sub: argparse._SubParsersAction) -> None:
    """`webhook-app sandbox`: hands over to the separate `commercelayer-sandbox` distribution.

    The sandbox is a test tool and not part of the service (nor of its image); this entry only
    runs it where it is installed, and otherwise says how to install it."""
    try:
        from commercelayer_sandbox import cli as sandbox_cli
    except ImportError:
        sp = sub.add_parser("sandbox", help="run the Commerce Layer double (needs `pip install ./sandbox`)",
                            add_help=False)
        sp.set_defaults(func=_sandbox_missing, accepts_any_arguments=True)
        return
    sandbox_cli.register(sub).set_defaults(func=sandbox_cli.run)


def _sandbox_missing(_args: argparse.Namespace) -> int:
    return _fail("the sandbox is a separate distribution: install it with `pip install ./sandbox` "
                 "(from a checkout of webhook-app), then run `commercelayer-sandbox`")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")
    except PolicyError as exc:
        return _fail(f"invalid policy: {exc}")
    except StoreError as exc:
        return _fail(f"database: {exc}")
    except WebhookAppError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
