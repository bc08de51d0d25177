"""`policy check` (validate a policy, show its decision for payloads) and `policy diff`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from webhook_app.cli.common import add_filters, delivery_filter, fail, load_settings, open_checked_store, read_input
from webhook_app.errors import InvalidPayload, PolicyError, UsageError


def cmd_policy_check(args: argparse.Namespace) -> int:
    from webhook_app.events import Event, check_topic, is_order_topic, topic_from_file_name
    from webhook_app.policy import load_policy

    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        return fail(f"invalid policy: {exc}")
    for warning in policy.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    if not args.payloads:
        print(f"policy OK: {len(policy.rules)} rules")
        return 0
    status = 0
    for name in args.payloads:
        try:
            raw = read_input(name)
        except UsageError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        topic = args.topic or topic_from_file_name(name)
        if topic is None:
            print(f"{name}: no topic: name the file like orders.place.NAME.json or give --topic", file=sys.stderr)
            status = 1
            continue
        try:
            topic = check_topic(topic)
            if not is_order_topic(topic):
                # Not an order event: the service records it and decides nothing (README, intake).
                print(f"{name}: {topic}: not an order topic: recorded as ignored, no policy decision")
                continue
            event = Event.from_body(topic, raw)
        except InvalidPayload as exc:
            print(f"{name}: invalid payload: {exc}", file=sys.stderr)
            status = 1
            continue
        chosen = policy.choose(event)
        d = policy.decide(event)
        if args.json:
            print(
                json.dumps(
                    {
                        "payload": name,
                        "topic": topic,
                        "order_id": event.order_id,
                        "action": d.action,
                        "rule": d.rule,
                        "rule_action": chosen.action,
                        "guard": d.guard,
                        "reason": d.reason,
                        "wallet_entry_id": d.wallet_entry_id,
                    }
                )
            )
        else:
            by = f"guard {d.guard} (rule {d.rule} chose {chosen.action})" if d.guard else f"rule {d.rule}"
            print(f"{name}: {topic} order {event.order_id}: {d.action} by {by}: {d.reason}")
    return status


def cmd_policy_diff(args: argparse.Namespace) -> int:
    from webhook_app.ops.whatif import diff
    from webhook_app.policy import load_policy

    settings = load_settings()
    new = load_policy(args.policy)
    current = load_policy(settings.policy_path)
    store = open_checked_store(settings)
    try:
        changes = diff(store, new, current, delivery_filter(args))
    finally:
        store.close()
    for c in changes:
        print(json.dumps(c.__dict__) if args.json else c.line())
    print(f"{len(changes)} orders would be decided differently", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    pol = sub.add_parser("policy", help="work with policy files")
    psub = pol.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    sp = psub.add_parser("check", help="validate a policy and show its decision for payloads")
    sp.add_argument("policy", help="the policy file (TOML)")
    sp.add_argument("payloads", nargs="*", help="webhook bodies (topic taken from the file name, else --topic)")
    sp.add_argument("--topic", default=None, help="the topic for every payload (default from the file name)")
    sp.add_argument("--json", action="store_true", help="one JSON object per payload")
    sp.set_defaults(func=cmd_policy_check)

    sp = psub.add_parser("diff", help="list the orders another policy would decide differently")
    sp.add_argument("policy", help="the new policy file")
    sp.add_argument("--json", action="store_true", help="one JSON object per order")
    add_filters(sp)
    sp.set_defaults(func=cmd_policy_diff)
