"""Issue 11 in the policy: one card, one entry (`wallet_match`), gateway readiness, topic warnings."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from typing import Any

import pytest
from support import base_env
from support.builders import order_document

from webhook_app.config import bundled_policy_path
from webhook_app.errors import PolicyError
from webhook_app.events import Event
from webhook_app.policy import SAVE, load_policy, parse_policy, readiness, wallet

SAVE_ALL = """
version = 1
[default]
action = "skip"
[[rules]]
name = "save"
topics = ["orders.place"]
action = "save_payment_source"
"""


def policy(extra: str = "", rules: str = SAVE_ALL) -> Any:
    return parse_policy(tomllib.loads(textwrap.dedent(extra) + rules))


def stripe(source_id: str, *, pm: str, fingerprint: str | None, last4: str = "4242", exp: int = 4) -> dict:
    card: dict[str, Any] = {"last4": last4, "exp_month": exp, "exp_year": 2031, "brand": "visa"}
    if fingerprint:
        card["fingerprint"] = fingerprint
    return {
        "id": source_id,
        "type": "stripe_payments",
        "attributes": {
            "options": {"setup_future_usage": "off_session"},
            "payment_method": {"id": pm, "card": card},
            "payment_instrument": {
                "issuer_type": "card",
                "card_type": "visa",
                "card_last_digits": last4,
                "card_expiry_month": str(exp),
                "card_expiry_year": "2031",
            },
        },
    }


def event_with(
    order_source: dict, entry_sources: list[dict | None], *, include_entry_sources: bool = True, **kw: Any
) -> Event:
    """An orders.place event whose wallet holds one entry per `entry_sources` item (None: no linkage)."""
    wallet_items = []
    for n, s in enumerate(entry_sources):
        item: dict[str, Any] = {"id": f"Entry{n}", "created_at": f"2026-01-0{n + 1}T00:00:00.000Z"}
        if s is not None:
            item.update(source_id=s["id"], token=s["attributes"]["payment_method"]["id"])
        else:
            item.update(token="pm_unknown")
        wallet_items.append(item)
    doc = order_document(source_id=order_source["id"], wallet=wallet_items, **kw)
    doc["included"] = [r for r in doc["included"] if r["type"] != "stripe_payments"] + [order_source]
    if include_entry_sources:
        doc["included"] += [s for s in entry_sources if s is not None and s["id"] != order_source["id"]]
    return Event.from_document("orders.place", doc)


NEW = stripe("psNewRecrd", pm="pm_new", fingerprint="fpCARD")
OLD = stripe("psOldRecrd", pm="pm_old", fingerprint="fpCARD")
OTHER_CARD = stripe("psOtherCrd", pm="pm_other", fingerprint="fpOTHER")


def test_same_card_on_another_record_is_card_already_in_wallet_with_the_entry():
    d = policy().decide(event_with(NEW, [OTHER_CARD, OLD]))
    assert d.action == "skip" and d.guard == "card_already_in_wallet"
    assert d.wallet_entry_id == "Entry1" and "card_fingerprint" in d.reason
    # another card is no match: the save goes ahead
    assert policy().decide(event_with(NEW, [OTHER_CARD])).action == SAVE


def test_the_record_itself_stays_already_in_wallet_and_wins_over_a_card_match():
    d = policy().decide(event_with(NEW, [OLD, NEW]))
    assert d.guard == "already_in_wallet" and d.wallet_entry_id == "Entry1"


def test_no_conclusion_from_entry_sources_that_were_not_included():
    ev = event_with(NEW, [OLD], include_entry_sources=False)
    look = wallet.look_up(ev)
    assert not look.known and not look.in_wallet  # the worker reads before writing
    # an entry without linkage and another token could be the same card typed again: unknown
    assert not wallet.look_up(event_with(NEW, [None])).known


def test_payment_instrument_is_opt_in_and_a_fingerprint_decides_when_both_carry_one():
    no_fp_old = stripe("psOldRecrd", pm="pm_old", fingerprint=None)
    no_fp_new = stripe("psNewRecrd", pm="pm_new", fingerprint=None)
    assert policy().decide(event_with(no_fp_new, [no_fp_old])).action == SAVE  # default: exact keys only
    with_pi = policy('wallet_match = ["gateway_token", "card_fingerprint", "payment_instrument"]\n')
    d = with_pi.decide(event_with(no_fp_new, [no_fp_old]))
    assert d.guard == "card_already_in_wallet" and "payment_instrument" in d.reason
    # same brand, last 4 and expiry but another fingerprint: another card
    assert with_pi.decide(event_with(NEW, [stripe("psOldRecrd", pm="pm_old", fingerprint="fpX")])).action == SAVE


def test_gateway_token_on_another_record_matches_unless_left_out():
    same_pm = stripe("psOldRecrd", pm="pm_new", fingerprint=None)
    new = stripe("psNewRecrd", pm="pm_new", fingerprint=None)
    assert policy().decide(event_with(new, [same_pm])).guard == "card_already_in_wallet"
    assert policy('wallet_match = ["card_fingerprint"]\n').decide(event_with(new, [same_pm])).action == SAVE


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["fingerprint"]', "unknown matching key 'fingerprint'"),
        ('"gateway_token"', "must be a list"),
        ('["gateway_token", "gateway_token"]', "twice"),
    ],
)
def test_wallet_match_is_validated_naming_the_field(value, message):
    with pytest.raises(PolicyError) as e:
        policy(f"wallet_match = {value}\n")
    assert message in str(e.value) and "wallet_match" in str(e.value)


def test_default_wallet_match_is_the_exact_keys():
    assert load_policy(bundled_policy_path()).wallet_match == ("gateway_token", "card_fingerprint")


def source_event(ptype: str, attrs: dict, *, status: str = "placed") -> Event:
    doc = order_document(source_type=ptype, status=status)
    for r in doc["included"]:
        if r["type"] == ptype:
            r["attributes"] = attrs
    return Event.from_document("orders.place", doc)


@pytest.mark.parametrize(
    ("ptype", "attrs", "status", "code", "fix"),
    [
        ("braintree_payments", {"payment_method_nonce": "n-1"}, "placed", "braintree_nonce_used", "orders.pending"),
        ("braintree_payments", {"payment_method_nonce": None}, "pending", "braintree_no_nonce", "nonce"),
        ("adyen_payments", {"payment_request_data": None}, "placed", "adyen_no_payment_request_data", "request data"),
        (
            "adyen_payments",
            {"payment_request_data": {"x": 1}, "payment_response": {"resultCode": "Authorised"}},
            "placed",
            "adyen_no_recurring_detail_reference",
            "Additional data",
        ),
        (
            "checkout_com_payments",
            {"payment_response": {"status": "x"}},
            "placed",
            "checkout_com_no_payment_response_source",
            "source",
        ),
        ("klarna_payments", {"auth_token": None}, "placed", "klarna_no_auth_token", "auth_token"),
        (
            "stripe_payments",
            {"options": {"setup_future_usage": "on_session"}},
            "placed",
            "stripe_no_setup_future_usage",
            "off_session",
        ),
        ("axerve_payments", {"request_token": False}, "placed", "axerve_no_request_token", "request_token = true"),
    ],
)
def test_readiness_refuses_with_the_fix(ptype, attrs, status, code, fix):
    ev = source_event(ptype, attrs, status=status)
    d = policy().decide(ev)
    assert d.action == "skip" and d.guard == "gateway_not_ready"
    assert d.reason.startswith(f"guard gateway_not_ready: {code}:") and fix in d.reason


@pytest.mark.parametrize(
    ("ptype", "attrs", "status"),
    [
        ("braintree_payments", {"payment_method_nonce": "n-1"}, "pending"),
        (
            "adyen_payments",
            {
                "payment_request_data": {"x": 1},
                "payment_response": {"additionalData": {"recurring.recurringDetailReference": "r"}},
            },
            "placed",
        ),
        ("checkout_com_payments", {"payment_response": {"source": {"id": "src_1"}}}, "placed"),
        ("stripe_payments", {"options": {"setup_future_usage": "off_session"}}, "placed"),
        # not sent is unknown, never a refusal
        ("stripe_payments", {"payment_method": {"id": "pm_1"}}, "placed"),
        ("klarna_payments", {"session_id": "s"}, "placed"),
    ],
)
def test_readiness_lets_ready_or_unknown_sources_through(ptype, attrs, status):
    assert readiness.check(source_event(ptype, attrs, status=status)) is None


def test_warnings_for_braintree_saved_after_placing():
    bad = policy(
        rules=SAVE_ALL + 'when = { field = "payment_source.type", in = ["stripe_payments", "braintree_payments"] }\n'
    )
    (w,) = bad.warnings()
    assert w.startswith("rule save: saves braintree_payments sources on orders.place") and "orders.pending" in w
    no_topics = policy(rules=SAVE_ALL.replace('topics = ["orders.place"]\n', ""))
    assert "every order topic" in no_topics.warnings()[0]
    stripe_only = policy(rules=SAVE_ALL + 'when = { field = "payment_source.type", equals = "stripe_payments" }\n')
    assert stripe_only.warnings() == []
    assert load_policy(bundled_policy_path()).warnings() == []
    not_braintree = policy(
        rules=SAVE_ALL + 'when = { all = [{ field = "customer.id", exists = true }, '
        '{ field = "payment_source.type", not_equals = "braintree_payments" }] }\n'
    )
    assert not_braintree.warnings() == []
    either = policy(
        rules=SAVE_ALL + 'when = { any = [{ field = "payment_source.type", equals = "stripe_payments" }, '
        '{ field = "order.total_amount_cents", gt = 100 }] }\n'
    )
    assert len(either.warnings()) == 1  # the second branch can match a Braintree order


BRAINTREE_ON_PLACE = SAVE_ALL + 'when = { field = "payment_source.type", equals = "braintree_payments" }\n'


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "webhook_app", *args],
        capture_output=True,
        text=True,
        env={**base_env(), **(env or {})},
        timeout=60,
    )


def test_policy_check_warns_on_stderr_and_exits_0(tmp_path):
    # Every wallet type on orders.place: the Braintree ones cannot be saved, the others can.
    path = tmp_path / "save-on-place.toml"
    path.write_text(SAVE_ALL)
    r = cli("policy", "check", str(path))
    assert r.returncode == 0 and r.stdout.startswith("policy OK")
    (line,) = r.stderr.splitlines()
    assert line.startswith("warning: rule save: saves braintree_payments sources on orders.place")
    bundled = cli("policy", "check", str(bundled_policy_path()))
    assert bundled.returncode == 0 and bundled.stderr == ""


def test_the_service_logs_the_warnings_at_start(tmp_path):
    path = tmp_path / "save-on-place.toml"
    path.write_text(SAVE_ALL)  # BRAINTREE_ON_PLACE can never act: warned about too (test_policy_reach.py)
    env = {"WEBHOOK_APP_POLICY": str(path), "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"}
    r = cli("worker", "--once", env=env)
    assert r.returncode == 0, r.stderr
    logged = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    warned = [e for e in logged if e["level"] == "warning" and e["event"].startswith("policy warning: rule save:")]
    assert len(warned) == 1 and "braintree_payments" in warned[0]["event"] and warned[0]["policy"] == str(path)
