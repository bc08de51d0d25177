"""`commercelayer-sandbox` (and `python -m commercelayer_sandbox`): run the sandbox until stopped.

`register(subparsers)` adds the `sandbox` subcommand to the project's argparse CLI and
`run(args)` runs it; `main(argv)` is the stand-alone entry point with the same options.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from commercelayer_sandbox.errors import SandboxError

DESCRIPTION = (
    "Run a local double of Commerce Layer: the API (OAuth token, orders, wallets, webhooks) "
    "and the webhook sender, plus a control API under /_sandbox/. Binds to 127.0.0.1."
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; the control API has no auth: any other address is warned about)",
    )
    parser.add_argument("--port", type=int, default=8800, help="port (default 8800; 0 picks a free one)")
    parser.add_argument(
        "--seed",
        metavar="FILE",
        help="scenario file (.toml or .json), or 'example' for the bundled one",
    )
    parser.add_argument("--token-ttl", type=float, metavar="SECONDS", help="access token lifetime (default 7200)")
    parser.add_argument("--concurrency", type=int, metavar="N", help="webhook sender threads (default 4)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a configuration value, e.g. --set 'sender.max_retries=3' or --set 'api_limits=[\"100/60\"]' (repeatable)",
    )
    return parser


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `sandbox` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser("sandbox", help="run a local double of Commerce Layer", description=DESCRIPTION)
    return add_arguments(parser)


def config_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration the options ask for (SandboxError for a malformed --set)."""
    changes: dict[str, Any] = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SandboxError("--set", f"{item!r} is not KEY=JSON")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # a bare string
        node = changes
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    if args.token_ttl is not None:
        changes["token_ttl"] = args.token_ttl
    if args.concurrency is not None:
        changes.setdefault("sender", {})["concurrency"] = args.concurrency
    return changes


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 0 on a clean stop, 2 for bad options or scenario."""
    # Imported here: `register` (and so `webhook-app --help`) needs no Flask app.
    from commercelayer_sandbox.server import SandboxServer, is_loopback

    try:
        server = SandboxServer(host=args.host, port=args.port, scenario=args.seed, config=config_changes(args))
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except OSError as exc:
            print(
                f"sandbox: cannot listen on {args.host}:{args.port}: {exc.strerror}",
                file=sys.stderr,
            )
            return 1
        if not is_loopback(args.host):
            print(
                f"sandbox: warning: listening on {args.host}, not loopback only: anyone who can reach it can"
                " drive the control API (/_sandbox/, no authentication) and read its data; use --host 127.0.0.1",
                file=sys.stderr,
                flush=True,
            )
        print(
            f"sandbox: listening on {server.url} (API {server.api_url}, token {server.auth_url}, "
            f"control {server.url}/_sandbox/)",
            flush=True,
        )
        for slug, sandbox in server.sandboxes.items():
            summary = sandbox.summary()
            where = f"organization {slug} at {server.org_url(slug)}/: " if len(server.sandboxes) > 1 else ""
            print(
                f"sandbox: {where}{summary['orders']} orders, {summary['customers']} customers, "
                f"clients {', '.join(summary['clients']) or '(none)'}, "
                f"{len(summary['webhooks'])} webhooks",
                flush=True,
            )
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m commercelayer_sandbox", description=DESCRIPTION))
    return run(parser.parse_args(argv))
