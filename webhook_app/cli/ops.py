"""Operations commands: replay, policy diff, reconcile, webhooks register / status.

Registered on the main parser by `cli.py`; each reads settings once and reports problems as one
line (exit status 2) through `cli.main`'s error handling.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from webhook_app.config import Settings
from webhook_app.errors import ConfigError


def _client(settings: Settings) -> Any:
    from webhook_app.commercelayer import CommerceLayerClient

    if not settings.has_credentials:
        raise ConfigError("CL_CLIENT_ID", "this command calls Commerce Layer: set CL_CLIENT_ID, CL_CLIENT_SECRET "
                                          "and CL_API_BASE")
    return CommerceLayerClient.from_settings(settings)


def _store(settings: Settings) -> Any:
    from webhook_app.store import open_store

    store = open_store(settings.database_url, timeout=settings.db_timeout)
    store.check_schema()
    return store


def _filter(args: argparse.Namespace) -> Any:
    from webhook_app.reconcile import parse_since
    from webhook_app.store import DeliveryFilter

    now = time.time()
    return DeliveryFilter(topic=args.topic, order_id=args.order_id, decision=args.decision,
                          since=parse_since(args.since, now=now) if args.since else None,
                          until=parse_since(args.until, now=now) if args.until else None,
                          limit=args.limit)


def cmd_replay(args: argparse.Namespace) -> int:
    from webhook_app.cli import _settings
    from webhook_app.replay import Replayer, describe, from_files, from_store

    settings = _settings()
    secret = args.secret or (os.environ.get(args.secret_env, "") if args.secret_env else "")
    if not secret and settings.webhook_secrets:
        secret = settings.webhook_secrets[-1].secret.decode()
    if not secret:
        raise ConfigError("--secret", "the target's webhook secret is needed (--secret, --secret-env VAR, "
                                      "or CL_WEBHOOK_SECRETS)")
    keys: tuple[str, ...] = settings.replay_keys
    if args.replay_key_env:
        keys = tuple(k.strip() for k in os.environ.get(args.replay_key_env, "").split(",") if k.strip())
    if args.no_token:
        keys = ()
    if args.files:
        items = from_files(args.files, topic=args.file_topic)
    else:
        store = _store(settings)
        try:
            items = from_store(store, _filter(args), dead_only=args.dead_lettered)
        finally:
            store.close()
    if args.dry_run:
        for line in describe(items, target=args.target, with_token=bool(keys)):
            print(line)
        print(f"dry run: {len(items)} deliveries would be sent", file=sys.stderr)
        return 0
    if not keys:
        print("webhook-app: no replay key: deliveries the target has seen will be answered as duplicates",
              file=sys.stderr)
    replayer = Replayer(target=args.target, secret=secret, replay_keys=keys,
                        token_ttl=args.token_ttl or settings.replay_token_ttl,
                        rate=args.rate)
    try:
        summary = replayer.run(items, progress=sys.stderr)
    finally:
        replayer.close()
    print(summary.line())
    for failure in summary.failures[:20]:
        print(f"  {failure}", file=sys.stderr)
    return 0 if not summary.failures else 1


def cmd_policy_diff(args: argparse.Namespace) -> int:
    from webhook_app.cli import _settings
    from webhook_app.policy import load_policy
    from webhook_app.whatif import diff

    settings = _settings()
    new = load_policy(args.policy)
    current = load_policy(settings.policy_path)
    store = _store(settings)
    try:
        changes = diff(store, new, current, _filter(args))
    finally:
        store.close()
    for c in changes:
        print(json.dumps(c.__dict__) if args.json else c.line())
    print(f"{len(changes)} orders would be decided differently", file=sys.stderr)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from webhook_app.cli import _settings
    from webhook_app.policy import load_policy
    from webhook_app.reconcile import parse_since, reconcile

    settings = _settings()
    now = time.time()
    since = parse_since(args.since, now=now)
    until = parse_since(args.until, now=now) if args.until else None
    client, store = _client(settings), _store(settings)
    try:
        result = reconcile(client, store, load_policy(settings.policy_path), since=since, until=until,
                           dry_run=args.dry_run)
    finally:
        client.close()
        store.close()
    for order_id in result.missing:
        print(order_id)
    verb = "would be queued" if args.dry_run else "queued"
    print(f"listed {result.listed} orders; {len(result.missing)} had no delivery here; "
          f"{len(result.queued) if not args.dry_run else len(result.missing)} {verb}", file=sys.stderr)
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    from webhook_app.cli import _settings
    from webhook_app.policy import load_policy
    from webhook_app.registration import register, status

    settings = _settings()
    client = _client(settings)
    try:
        if args.webhooks_command == "register":
            planned = register(client, load_policy(settings.policy_path), callback_url=args.callback_url,
                               dry_run=args.dry_run)
            secrets = []
            for p in planned:
                state = ("exists " + str(p.existing_id)) if p.existing_id else (
                    "would create" if args.dry_run else "created " + str(p.created_id))
                print(f"{p.topic}: {state}; include_resources={','.join(p.include_resources)}")
                if p.shared_secret:
                    secrets.append(f"{p.topic.replace('.', '-')}:{p.shared_secret}")
            if secrets:
                print("\nSet this on the service (keep it secret):\n"
                      f"CL_WEBHOOK_SECRETS={','.join(secrets)}")
            return 0
        if args.reset:
            client.reset_webhook_circuit(args.reset)
        rows = status(client)
        if args.reset_open:
            for r in rows:
                if r["circuit_state"] == "open":
                    client.reset_webhook_circuit(str(r["id"]))
            rows = status(client)
        for r in rows:
            print(json.dumps(r) if args.json else
                  f"{r['id']}  {r['topic']:<28} circuit={r['circuit_state']} failures={r['circuit_failure_count']} "
                  f" {r['callback_url']}")
        return 0
    finally:
        client.close()


def add_filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--since", help="received since: 24h, 30m, 7d or an ISO 8601 time")
    sp.add_argument("--until", help="received before: a duration ago or an ISO 8601 time")
    sp.add_argument("--topic", help="only this topic")
    sp.add_argument("--order-id", help="only this order")
    sp.add_argument("--decision", help="only deliveries whose latest decision has this action, outcome or rule")
    sp.add_argument("--limit", type=int, default=100_000, help="at most this many deliveries (newest)")


def register(sub: Any, policy_sub: Any) -> None:
    sp = sub.add_parser("replay", help="re-send recorded deliveries to a target URL, re-signed")
    sp.add_argument("--target", required=True, help="URL to POST to, e.g. https://staging/webhooks/commercelayer")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--secret", help="the target's webhook secret (default: the newest of CL_WEBHOOK_SECRETS)")
    g.add_argument("--secret-env", metavar="VAR", help="read the target's webhook secret from VAR")
    sp.add_argument("--replay-key-env", metavar="VAR", help="the target's replay keys (default "
                    "WEBHOOK_APP_REPLAY_KEYS); each request gets a replay token so it runs again")
    sp.add_argument("--no-token", action="store_true", help="send without replay tokens (repeats stay duplicates)")
    sp.add_argument("--token-ttl", type=float, default=None,
                    help="replay token lifetime in seconds (default WEBHOOK_APP_REPLAY_TOKEN_TTL, 300)")
    sp.add_argument("--rate", type=float, default=10, help="requests per second (10)")
    sp.add_argument("--dry-run", action="store_true", help="print what would be sent, send nothing")
    sp.add_argument("--dead-lettered", action="store_true", help="only deliveries whose job is dead-lettered")
    sp.add_argument("--files", nargs="+", metavar="FILE", help="replay these files instead of the store")
    sp.add_argument("--file-topic", help="topic for --files (default from the file name)")
    add_filters(sp)
    sp.set_defaults(func=cmd_replay)

    sp = policy_sub.add_parser("diff", help="list the orders another policy would decide differently")
    sp.add_argument("policy", help="the new policy file")
    sp.add_argument("--json", action="store_true", help="one JSON object per order")
    add_filters(sp)
    sp.set_defaults(func=cmd_policy_diff)

    sp = sub.add_parser("reconcile", help="queue orders Commerce Layer has that never reached us")
    sp.add_argument("--since", required=True, help="orders updated since: 24h, 2d or an ISO 8601 time")
    sp.add_argument("--until", help="and before this")
    sp.add_argument("--dry-run", action="store_true", help="list them, queue nothing")
    sp.set_defaults(func=cmd_reconcile)

    wh = sub.add_parser("webhooks", help="register webhooks at Commerce Layer; show and reset circuits")
    wsub = wh.add_subparsers(dest="webhooks_command", required=True, metavar="SUBCOMMAND")
    sp = wsub.add_parser("register", help="create the webhooks the policy needs")
    sp.add_argument("--callback-url", required=True, help="this service's public intake URL")
    sp.add_argument("--dry-run", action="store_true", help="show what would be created")
    sp.set_defaults(func=cmd_webhooks)
    sp = wsub.add_parser("status", help="each webhook's circuit state and failure count")
    sp.add_argument("--reset", metavar="ID", help="reset this webhook's circuit first")
    sp.add_argument("--reset-open", action="store_true", help="reset every open circuit")
    sp.add_argument("--json", action="store_true", help="one JSON object per webhook")
    sp.set_defaults(func=cmd_webhooks)
