"""`replay`: re-send recorded deliveries (or files) to a target URL, re-signed (`webhook_app.ops.replay`)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import Any

from webhook_app.cli.common import (
    add_filters,
    add_org_argument,
    add_secret_args,
    delivery_filter,
    load_settings,
    open_checked_store,
    read_secret,
    stored_organization,
)


def cmd_replay(args: argparse.Namespace) -> int:
    from webhook_app.ops.replay import Replayer, describe, from_files, from_store

    settings = load_settings()
    # The target's own secret, always given: defaulting to this service's CL_WEBHOOK_SECRETS would
    # sign with the production secret for whatever --target names.
    secret = read_secret(args, "the target's webhook secret")
    keys: tuple[str, ...] = settings.replay_keys
    if args.replay_key_env:
        keys = tuple(k.strip() for k in os.environ.get(args.replay_key_env, "").split(",") if k.strip())
    if args.no_token:
        keys = ()
    organization = stored_organization(args, settings)
    if args.files:
        items = from_files(args.files, topic=args.file_topic, organization=organization or "")
    else:
        flt = replace(delivery_filter(args), organization=organization)
        store = open_checked_store(settings)
        try:
            items = from_store(store, flt, dead_only=args.dead_lettered)
        finally:
            store.close()
    if args.dry_run:
        for line in describe(items, target=args.target, with_token=bool(keys)):
            print(line)
        print(f"dry run: {len(items)} deliveries would be sent", file=sys.stderr)
        return 0
    if not keys:
        print(
            "webhook-app: no replay key: deliveries the target has seen will be answered as duplicates", file=sys.stderr
        )
    replayer = Replayer(
        target=args.target,
        secret=secret,
        replay_keys=keys,
        token_ttl=args.token_ttl or settings.replay_token_ttl,
        rate=args.rate,
    )
    try:
        summary = replayer.run(items, progress=sys.stderr)
    finally:
        replayer.close()
    print(summary.line())
    for failure in summary.failures[:20]:
        print(f"  {failure}", file=sys.stderr)
    return 0 if not summary.failures else 1


def _token_ttl(value: str) -> float:
    from webhook_app.tokens import MAX_REPLAY_TTL

    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= MAX_REPLAY_TTL:
        raise argparse.ArgumentTypeError(f"{value!r}: seconds from 1 to {MAX_REPLAY_TTL} (a day)")
    return seconds


def register(sub: Any) -> None:
    sp = sub.add_parser("replay", help="re-send recorded deliveries to a target URL, re-signed")
    sp.add_argument("--target", required=True, help="URL to POST to, e.g. https://staging/webhooks/commercelayer")
    add_secret_args(sp, "the target's webhook secret")
    sp.add_argument(
        "--replay-key-env",
        metavar="VAR",
        help="the target's replay keys (default "
        "WEBHOOK_APP_REPLAY_KEYS); each request gets a replay token so it runs again",
    )
    sp.add_argument("--no-token", action="store_true", help="send without replay tokens (repeats stay duplicates)")
    sp.add_argument(
        "--token-ttl",
        type=_token_ttl,
        default=None,
        help="replay token lifetime in seconds, at most a day (default WEBHOOK_APP_REPLAY_TOKEN_TTL, 300)",
    )
    sp.add_argument("--rate", type=float, default=10, help="requests per second (10)")
    sp.add_argument("--dry-run", action="store_true", help="print what would be sent, send nothing")
    sp.add_argument("--dead-lettered", action="store_true", help="only deliveries whose job is dead-lettered")
    sp.add_argument("--files", nargs="+", metavar="FILE", help="replay these files instead of the store")
    sp.add_argument("--file-topic", help="topic for --files (default from the file name)")
    add_filters(sp)
    add_org_argument(sp)
    sp.set_defaults(func=cmd_replay)
