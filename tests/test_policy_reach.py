"""`policy check` says OK only when the policy can save or reuse something (policy/reach.py).

Before, each policy below was "policy OK" (exit 0), and `doctor` gave it a tick, although the
guards or its own rules meant that every order would end `skip`.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support import base_env

from webhook_app.config import Settings, bundled_policy_path
from webhook_app.errors import StoreUnavailable
from webhook_app.ops.doctor import Doctor
from webhook_app.policy import parse_policy

HEAD = 'version = 1\n[default]\naction = "skip"\n'


def save(when: str = "", topics: str = '["orders.place"]', name: str = "save") -> str:
    rule = f'[[rules]]\nname = "{name}"\ntopics = {topics}\naction = "save_payment_source"\n'
    return rule + (f"when = {when}\n" if when else "")


NEVER = {
    "nothing but skip": (HEAD, None),
    "guest orders only": (
        HEAD + save('{ all = [{ field = "order.guest", equals = true }] }'),
        "rule save: can never save_payment_source: it matches guest orders only, and guest orders have no wallet",
    ),
    "orders without a customer only": (
        HEAD + save('{ field = "customer.id", exists = false }'),
        "rule save: can never save_payment_source: it matches orders without a customer only",
    ),
    "types without a wallet flow": (
        HEAD + save('{ field = "payment_source.type", in = ["wire_transfers", "paypal_payments"] }'),
        "rule save: can never save_payment_source: it saves paypal_payments, wire_transfers only, and none has a "
        "wallet flow (wallet_source_types)",
    ),
    "braintree once placed": (
        HEAD + save('{ field = "payment_source.type", equals = "braintree_payments" }'),
        "rule save: can never save_payment_source: it saves braintree_payments sources only, and only once the "
        "order is placed, when the nonce is spent",
    ),
    "behind a rule that takes everything": (
        HEAD + '[[rules]]\nname = "off"\naction = "skip"\n' + save(),
        "rule save: can never save_payment_source: rule off, before it, takes every order it could match (skip)",
    ),
}

ACTS = {
    "the bundled policy": bundled_policy_path().read_text(),
    "behind a conditional skip": HEAD
    + '[[rules]]\nname = "vip"\naction = "skip"\nwhen = { field = "order.metadata.vip", equals = true }\n'
    + save(),
    "guests or registered": HEAD
    + save('{ any = [{ field = "order.guest", equals = true }, { field = "order.guest", equals = false }] }'),
    "braintree before placing": HEAD
    + save('{ field = "payment_source.type", equals = "braintree_payments" }', topics='["orders.pending"]'),
    "a saving default": 'version = 1\n[default]\naction = "save_payment_source"\n',
}


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    p = tmp_path / "policy.toml"
    p.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "webhook_app", "policy", "check", str(p)],
        capture_output=True,
        text=True,
        env=base_env(),
        timeout=60,
    )


@pytest.mark.parametrize("case", NEVER, ids=list(NEVER))
def test_a_policy_that_can_never_act_is_not_ok(tmp_path, case):
    text, warning = NEVER[case]
    r = check(tmp_path, text)
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.splitlines()[-1] == (
        "webhook-app: policy NOT OK: it can never save or reuse a payment source: every order would be skipped"
    )
    if warning is not None:
        assert f"warning: {warning}" in r.stderr.splitlines()
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("case", ACTS, ids=list(ACTS))
def test_a_policy_that_can_act_is_ok(tmp_path, case):
    r = check(tmp_path, ACTS[case])
    assert r.returncode == 0 and r.stdout.startswith("policy OK"), (r.stdout, r.stderr)
    assert "can never" not in r.stderr


def test_one_rule_that_can_never_act_is_warned_about_beside_one_that_can(tmp_path):
    r = check(tmp_path, HEAD + save('{ field = "order.guest", equals = true }', name="guests") + save())
    assert r.returncode == 0 and r.stdout == "policy OK: 2 rules\n"
    assert "warning: rule guests: can never save_payment_source: it matches guest orders only" in r.stderr


def test_doctor_crosses_a_policy_that_can_never_act(tmp_path):
    def no_store(settings: Settings):
        raise StoreUnavailable("not in this test")

    policy = parse_policy(tomllib.loads(NEVER["guest orders only"][0]), source="p.toml")
    doctor = Doctor(
        callback_url="http://127.0.0.1:9/webhooks/commercelayer",
        load_settings=Settings,
        open_store=no_store,
        load_policy=lambda settings: policy,
        make_client=lambda settings: pytest.fail("shadow mode calls nothing"),
        now=lambda: 0.0,
    )
    (line,) = [c for c in doctor.run() if c.name == "policy"]
    assert not line.ok
    assert "can never save or reuse a payment source" in line.detail and "guest orders only" in line.detail


def test_the_service_logs_at_start_that_its_policy_can_never_act(caplog):
    from webhook_app.cli.service import warn_policy

    policy = parse_policy(tomllib.loads(NEVER["orders without a customer only"][0]), source="p.toml")
    with caplog.at_level("WARNING"):
        warn_policy(policy)
    assert [r.getMessage() for r in caplog.records][-2:] == [
        "policy warning: rule save: can never save_payment_source: it matches orders without a customer only",
        "policy warning: it can never save or reuse a payment source",
    ]
