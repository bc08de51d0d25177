"""`doctor`: the checks to run before going live and when something looks wrong (`ops/doctor.py`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from webhook_app.cli.common import (
    add_org_argument,
    commerce_layer_client,
    load_settings_for,
    open_checked_store,
    webhook_secrets_name,
)

if TYPE_CHECKING:
    from webhook_app.config import Settings
    from webhook_app.policy import Policy


def _policy(settings: Settings) -> Policy:
    from webhook_app.policy import load_policy

    return load_policy(settings.policy_path)


def cmd_doctor(args: argparse.Namespace) -> int:
    from webhook_app.ops.doctor import Doctor

    doctor = Doctor(
        callback_url=args.callback_url,
        load_settings=lambda: load_settings_for(args),
        open_store=open_checked_store,
        load_policy=_policy,
        make_client=commerce_layer_client,
        now=time.time,
        secrets_name=webhook_secrets_name(args),
    )
    failed = 0
    for check in doctor.run():
        failed += not check.ok
        print(json.dumps(check.as_json(), ensure_ascii=False) if args.json else check.line(), flush=True)
    if not args.json:
        print("all checks passed" if not failed else f"{failed} checks failed")
    return 1 if failed else 0


def register(sub: Any) -> None:
    sp = sub.add_parser(
        "doctor",
        help="check settings, database, secrets, policy, credentials, webhooks, worker and callback URL (reads only)",
    )
    sp.add_argument("--callback-url", required=True, help="the public intake URL the webhooks must point at")
    sp.add_argument("--json", action="store_true", help="one JSON object per check")
    add_org_argument(sp)
    sp.set_defaults(func=cmd_doctor)
