"""`webhooks register` / `webhooks status`: the webhooks at Commerce Layer (`webhook_app.ops.registration`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from webhook_app.cli.common import commerce_layer_client, load_settings


def cmd_webhooks(args: argparse.Namespace) -> int:
    from webhook_app.ops.registration import register, status
    from webhook_app.policy import load_policy

    settings = load_settings()
    policy = load_policy(settings.policy_path)
    client = commerce_layer_client(settings)
    try:
        if args.webhooks_command == "register":
            planned = register(client, policy, callback_url=args.callback_url, dry_run=args.dry_run)
            secrets = []
            for p in planned:
                state = (
                    ("exists " + str(p.existing_id))
                    if p.existing_id
                    else ("would create" if args.dry_run else "created " + str(p.created_id))
                )
                print(f"{p.topic}: {state}; include_resources={','.join(p.include_resources)}")
                if p.shared_secret:
                    secrets.append(f"{p.topic.replace('.', '-')}:{p.shared_secret}")
            if secrets:
                print(f"\nSet this on the service (keep it secret):\nCL_WEBHOOK_SECRETS={','.join(secrets)}")
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
            print(
                json.dumps(r)
                if args.json
                else f"{r['id']}  {r['topic']:<28} circuit={r['circuit_state']} failures={r['circuit_failure_count']} "
                f" {r['callback_url']}"
            )
        return 0
    finally:
        client.close()


def register(sub: Any) -> None:
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
