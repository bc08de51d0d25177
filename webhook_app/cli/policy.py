"""`policy check` (validate a policy, show its decision for payloads or a directory of samples,
and which rules match none or all of them) and `policy diff`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webhook_app.cli.common import (
    add_command_group,
    add_filters,
    delivery_filter,
    fail,
    load_settings,
    open_checked_store,
    read_input,
)
from webhook_app.errors import InvalidPayload, PolicyError, PolicyModelError, UsageError

if TYPE_CHECKING:
    from webhook_app.events import Event
    from webhook_app.policy import Policy


#: why a valid policy that saves and reuses nothing is not OK (`policy check`, `doctor`)
NEVER_ACTS = "it can never save or reuse a payment source: every order would be skipped"


def cmd_policy_check(args: argparse.Namespace) -> int:
    from webhook_app.policy import load_policy

    try:
        policy = load_policy(args.policy)
    except PolicyModelError as exc:
        for line in exc.problems:
            print(f"webhook-app: invalid policy: {line}", file=sys.stderr)
        return 1
    except PolicyError as exc:
        return fail(f"invalid policy: {exc}", 1)
    for warning in policy.warnings() + policy.never_acting():
        print(f"warning: {warning}", file=sys.stderr)
    for note in policy.notes():
        print(f"note: {note}", file=sys.stderr)
    payloads = list(args.payloads)
    if args.samples is not None:
        payloads += _sample_files(args.samples)
    if not payloads and args.samples is None:
        return _verdict(policy)
    status = 0
    events = []
    for name in payloads:
        event, ok = _decide(policy, name, args)
        status = status if ok else 1
        if event is not None:
            events.append(event)
    if args.samples is not None:
        if not events:
            print(f"{args.samples}: no order samples (files named like orders.place.NAME.json)", file=sys.stderr)
            return 1
        _report_rules(policy, events, json_lines=args.json)
    return status


def _verdict(policy: Policy) -> int:
    """`policy OK` only for a policy that can save or reuse something: a valid one whose every
    order would end `skip` is NOT OK (exit 1), the warnings above naming each rule's reason."""
    if not policy.acts():
        return fail(f"policy NOT OK: {NEVER_ACTS}", 1)
    print(f"policy OK: {len(policy.rules)} rules")
    return 0


def _sample_files(directory: str) -> list[str]:
    """The JSON bodies in `directory` whose name starts with a topic (others are named and skipped)."""
    from webhook_app.events import topic_from_file_name

    d = Path(directory)
    if not d.is_dir():
        raise UsageError(f"--samples {directory}: not a directory")
    out = []
    for f in sorted(d.glob("*.json")):
        if topic_from_file_name(f.name) is None:
            print(f"{f}: skipped: no topic in the name (like orders.place.NAME.json)", file=sys.stderr)
        else:
            out.append(str(f))
    return out


def _decide(policy: Policy, name: str, args: argparse.Namespace) -> tuple[Event | None, bool]:
    """Print one payload's decision: (its order event, or None; False if it could not be read)."""
    from webhook_app.events import Event, check_topic, is_order_topic, topic_from_file_name

    try:
        raw = read_input(name)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return None, False
    topic = args.topic or topic_from_file_name(name)
    if topic is None:
        print(f"{name}: no topic: name the file like orders.place.NAME.json or give --topic", file=sys.stderr)
        return None, False
    try:
        topic = check_topic(topic)
        if not is_order_topic(topic):
            # Not an order event: the service records it and decides nothing
            # (docs/reference/intake.md, *The intake, `POST /webhooks/commercelayer`*).
            print(f"{name}: {topic}: not an order topic: recorded as ignored, no policy decision")
            return None, True
        event = Event.from_body(topic, raw)
    except InvalidPayload as exc:
        print(f"{name}: invalid payload: {exc}", file=sys.stderr)
        return None, False
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
    return event, True


def _report_rules(policy: Policy, events: list[Event], *, json_lines: bool) -> None:
    """How many samples each rule matches (its topics and `when`, whatever the rules before it)
    and decides (first match); a rule that matches none or all of them is named as such."""
    n = len(events)
    decided = [policy.choose(e).rule for e in events]
    rows = []
    for rule in policy.rules:
        matched = sum(rule.matches(e) for e in events)
        rows.append({"rule": rule.name, "matched": matched, "decided": decided.count(rule.name), "samples": n})
        if json_lines:
            continue
        if matched == 0:
            on_topic = rule.topics is None or any(e.topic in rule.topics for e in events)
            why = "" if on_topic else f" (no sample is on its topics: {', '.join(sorted(rule.topics or ()))})"
            print(f"rule {rule.name}: matches NO sample (0 of {n}){why}")
        elif matched == n:
            print(f"rule {rule.name}: matches EVERY sample ({n} of {n}), decides {decided.count(rule.name)}")
        else:
            print(f"rule {rule.name}: matches {matched} of {n} samples, decides {decided.count(rule.name)}")
    if json_lines:
        print(json.dumps({"samples": n, "rules": rows, "default": decided.count("default")}))
    else:
        print(f"default: decides {decided.count('default')} of {n} samples")


def cmd_policy_diff(args: argparse.Namespace) -> int:
    from webhook_app.ops.whatif import diff
    from webhook_app.policy import load_policy

    settings = load_settings()
    new = load_policy(args.policy)
    current = load_policy(settings.policy_path)
    store = open_checked_store(settings)
    skipped: list[str] = []
    try:
        changes = diff(store, new, current, delivery_filter(args), skipped=skipped)
    finally:
        store.close()
    for c in changes:
        print(json.dumps(c.__dict__) if args.json else c.line())
    print(f"{len(changes)} orders would be decided differently", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} skipped: body removed (forgotten or past retention)", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    psub = add_command_group(sub, "policy", help="work with policy files")
    sp = psub.add_parser(
        "check", help="validate a policy (its fields and the types of their values) and show its decision for payloads"
    )
    sp.add_argument("policy", help="the policy file (TOML)")
    sp.add_argument("payloads", nargs="*", help="webhook bodies (topic taken from the file name, else --topic)")
    sp.add_argument("--topic", default=None, help="the topic for every payload (default from the file name)")
    sp.add_argument("--json", action="store_true", help="one JSON object per payload")
    sp.add_argument(
        "--samples",
        default=None,
        metavar="DIR",
        help="decide every TOPIC.NAME.json body in DIR and report rules that match none or all of them",
    )
    sp.set_defaults(func=cmd_policy_check)

    sp = psub.add_parser("diff", help="list the orders another policy would decide differently")
    sp.add_argument("policy", help="the new policy file")
    sp.add_argument("--json", action="store_true", help="one JSON object per order")
    add_filters(sp)
    sp.set_defaults(func=cmd_policy_diff)
