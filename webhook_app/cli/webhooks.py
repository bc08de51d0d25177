"""`webhooks register` / `webhooks status`: the webhooks at Commerce Layer (`webhook_app.ops.registration`)."""

from __future__ import annotations

import argparse
import json
from contextlib import closing
from typing import Any

from webhook_app.cli.common import (
    add_command_group,
    add_org_argument,
    commerce_layer_client,
    load_organization_for,
    load_settings_for,
    open_checked_store,
    webhook_secrets_name,
)


def cmd_watch(args: argparse.Namespace) -> int:
    """One look by the circuit guard: each circuit, a warning for a rising count, and with
    WEBHOOK_APP_CIRCUIT_AUTO_RESET (unless --dry-run) the reset and backfill of an open circuit."""
    from webhook_app.ops.circuit import NO_HEALTH_URL, CircuitGuard
    from webhook_app.policy import load_policy

    settings, organization = load_organization_for(args)  # agency mode: the backfill is queued under it
    policy = load_policy(settings.policy_path)
    with closing(commerce_layer_client(settings)) as client, closing(open_checked_store(settings)) as store:
        guard = CircuitGuard.from_settings(
            settings, client=client, store=store, policy=policy, organization=organization
        )
        check = guard.check(dry_run=args.dry_run)
    if check.error:
        print(f"error: {check.error}")
        return 1
    unchecked = None if settings.circuit_health_url else NO_HEALTH_URL
    if check.unhealthy and unchecked is not None and not args.json:
        print(unchecked)
    for c in check.circuits:
        backfilled = check.backfilled.get(c.webhook_id)
        row: dict[str, Any] = {
            "id": c.webhook_id,
            "topic": c.topic,
            "circuit_state": c.state,
            "circuit_failure_count": c.failures,
            "warning": c.webhook_id in check.warned,
            "reset": c.webhook_id in check.reset,
            "backfilled": backfilled,
        }
        if args.json:
            print(json.dumps(row))
            continue
        notes = []
        if row["warning"]:
            notes.append("WARNING")
        if row["reset"]:
            notes.append("reset")
        if backfilled is not None:
            notes.append(f"backfilled {len(backfilled)} orders")
        if c.open and not row["reset"]:
            notes.append(
                ("intake not healthy" if unchecked is None else "intake not checked")
                if check.unhealthy
                else "left open"
            )
        print(f"{c.webhook_id}  {c.topic:<28} circuit={c.state} failures={c.failures}  {' '.join(notes)}".rstrip())
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    from webhook_app.ops.registration import register, status
    from webhook_app.policy import load_policy

    settings = load_settings_for(args)
    policy = load_policy(settings.policy_path)
    with closing(commerce_layer_client(settings)) as client:
        if args.webhooks_command == "register":
            planned = register(
                client,
                policy,
                callback_url=args.callback_url,
                dry_run=args.dry_run,
                anonymization=settings.honour_anonymization,
            )
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
                name = webhook_secrets_name(args)
                if name.isidentifier():  # a variable (agency mode: the organization's own)
                    print(f"\nSet this on the service (keep it secret):\n{name}={','.join(secrets)}")
                else:  # agency mode: the organization's webhook_secrets_file
                    print(f"\nWrite this to {name} (keep it secret):\n{','.join(secrets)}")
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


def register(sub: Any) -> None:
    wsub = add_command_group(sub, "webhooks", help="register webhooks at Commerce Layer; show and reset circuits")
    sp = wsub.add_parser("register", help="create the webhooks the policy needs")
    sp.add_argument("--callback-url", required=True, help="this service's public intake URL")
    add_org_argument(sp)
    sp.add_argument("--dry-run", action="store_true", help="show what would be created")
    sp.set_defaults(func=cmd_webhooks)
    sp = wsub.add_parser("status", help="each webhook's circuit state and failure count")
    sp.add_argument("--reset", metavar="ID", help="reset this webhook's circuit first")
    sp.add_argument("--reset-open", action="store_true", help="reset every open circuit")
    add_org_argument(sp)
    sp.add_argument("--json", action="store_true", help="one JSON object per webhook")
    sp.set_defaults(func=cmd_webhooks)
    sp = wsub.add_parser(
        "watch", help="one look by the circuit guard: warn, and reset and backfill if CIRCUIT_AUTO_RESET is on"
    )
    sp.add_argument("--dry-run", action="store_true", help="never reset or backfill")
    add_org_argument(sp)
    sp.add_argument("--json", action="store_true", help="one JSON object per webhook")
    sp.set_defaults(func=cmd_watch)
