import textwrap

import pytest
from support import base_env
from support.builders import order_document

from webhook_app.config import bundled_policy_path
from webhook_app.errors import PolicyError
from webhook_app.events import Event
from webhook_app.policy import SAVE, SKIP, USE_WALLET, load_policy, parse_policy


def event(topic="orders.place", **kw):
    return Event.from_document(topic, order_document(**kw))


def policy(text):
    import tomllib

    return parse_policy(tomllib.loads(textwrap.dedent(text)))


BASE = """
version = 1
[default]
action = "skip"
"""


def test_bundled_policy_saves_registered_wallet_capable_place_events_only():
    p = load_policy(bundled_policy_path())
    assert p.decide(event()).action == SAVE
    assert p.decide(event()).rule == "save-registered-customer-source"
    assert p.decide(event("orders.approve")).action == SKIP
    assert p.decide(event(source_type="paypal_payments")).action == SKIP
    guest = p.decide(event(guest=True))
    assert guest.action == SKIP and guest.rule == "default"


def test_first_match_wins_and_default_applies():
    p = policy(
        BASE
        + """
    [[rules]]
    name = "big"
    action = "save_payment_source"
    when = { field = "order.total_amount_cents", gte = 10000 }
    [[rules]]
    name = "all"
    action = "skip"
    """
    )
    assert p.decide(event(total_cents=10000)).rule == "big"
    assert p.decide(event(total_cents=9999)).rule == "all"
    assert policy(BASE).decide(event()).rule == "default"


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ('{ field = "order.status", equals = "placed" }', True),
        ('{ field = "order.status", not_equals = "placed" }', False),
        ('{ field = "order.currency_code", in = ["EUR", "USD"] }', True),
        ('{ field = "order.currency_code", not_in = ["EUR"] }', False),
        ('{ field = "order.total_amount_cents", gt = 11999 }', True),
        ('{ field = "order.total_amount_cents", lt = 12000 }', False),
        ('{ field = "order.total_amount_cents", lte = 12000 }', True),
        ('{ field = "order.metadata.vip", exists = true }', True),
        ('{ field = "order.metadata.nope", exists = false }', True),
        ('{ field = "customer.email", matches = "@example\\\\.com$" }', True),
        ('{ field = "market.code", equals = "eu" }', True),
        ('{ field = "payment_source.type", equals = "stripe_payments" }', True),
        ('{ field = "line_items.sku_code", equals = "GIFT" }', True),
        ('{ field = "line_items.sku_code", equals = "GIFT", quantifier = "all" }', False),
        ('{ field = "line_items.count", gte = 2 }', True),
        ('{ field = "topic", equals = "orders.place" }', True),
        ('{ all = [{ field = "order.guest", equals = false }, { field = "order.status", equals = "placed" }] }', True),
        ('{ any = [{ field = "order.guest", equals = true }, { field = "order.status", equals = "draft" }] }', False),
        ('{ not = { field = "order.guest", equals = true } }', True),
        # Values of another type never compare: on typed fields the loader refuses them
        # (test_policy_model.py); on a metadata key, whose type nobody knows, they never match.
        ('{ field = "order.metadata.vip", equals = 1 }', False),
        ('{ field = "order.metadata.score", gt = "100" }', False),
        ('{ field = "order.metadata.score", gt = 100 }', True),
    ],
)
def test_operators(cond, expected):
    p = policy(
        BASE
        + f"""
    [[rules]]
    name = "r"
    action = "save_payment_source"
    when = {cond}
    """
    )
    ev = event(metadata={"vip": True, "score": 120}, line_items=[{"sku_code": "GIFT"}, {"sku_code": "A"}])
    assert (p.choose(ev).rule == "r") is expected


def test_topics_limit_rules():
    p = policy(
        BASE
        + """
    [[rules]]
    name = "approve-only"
    topics = ["orders.approve"]
    action = "save_payment_source"
    """
    )
    assert p.choose(event("orders.place")).rule == "default"
    assert p.choose(event("orders.approve")).rule == "approve-only"
    assert p.topics() == frozenset({"orders.approve"})


@pytest.mark.parametrize(
    ("kw", "guard"),
    [
        ({"guest": True}, "guest_order"),
        ({"customer_id": None}, "no_customer"),
        ({"source_type": "wire_transfers"}, "no_wallet_flow"),
        ({"source_type": "paypal_payments"}, "no_wallet_flow"),
        ({"source_type": "satispay_payments"}, "no_wallet_flow"),
        ({"source_type": None}, "no_payment_source"),
        ({"wallet": [{"id": "w1", "source_id": "psAAAA1111"}]}, "already_in_wallet"),
    ],
)
def test_guards_override_any_rule(kw, guard):
    p = policy(
        BASE
        + """
    [[rules]]
    name = "always"
    action = "save_payment_source"
    """
    )
    d = p.decide(event(**kw))
    assert d.action == SKIP and d.guard == guard and d.rule == "always" and guard in d.reason


def test_use_wallet_strategies_and_guards():
    wallet = [
        {"id": "w-old", "created_at": "2025-01-01T00:00:00Z", "source_id": "ps-x"},
        {"id": "w-new", "created_at": "2026-01-01T00:00:00Z", "source_id": "ps-y"},
    ]
    for strategy, chosen in (("newest", "w-new"), ("oldest", "w-old")):
        p = policy(
            BASE
            + f"""
        [[rules]]
        name = "reuse"
        action = "use_wallet_source"
        strategy = "{strategy}"
        """
        )
        d = p.decide(event(wallet=wallet))
        assert d.action == USE_WALLET and d.wallet_entry_id == chosen
    only = policy(
        BASE
        + """
    [[rules]]
    name = "reuse"
    action = "use_wallet_source"
    strategy = "only"
    """
    )
    assert only.decide(event(wallet=wallet)).guard == "no_wallet_entry"
    assert only.decide(event(wallet=wallet[:1])).wallet_entry_id == "w-old"
    assert only.decide(event(wallet=[])).guard == "no_wallet_entry"
    same = only.decide(event(wallet=[{"id": "w1", "source_id": "psAAAA1111"}]))
    assert same.guard == "already_using_wallet_entry"
    assert only.decide(event(guest=True, wallet=wallet[:1])).guard == "guest_order"
    assert "available_customer_payment_sources" in only.required_includes()


@pytest.mark.parametrize(
    ("text", "rule", "field"),
    [
        ('[default]\naction = "nope"', "default", "action"),
        ('[[rules]]\nname="a"\naction="skip"', None, "default"),
        (BASE + '[[rules]]\nname = "r1"\naction = "explode"', "r1", "action"),
        (BASE + '[[rules]]\nname = "r1"\naction = "skip"\nwhen = { field = "order.x", equal = 1 }', "r1", "when"),
        (
            BASE + '[[rules]]\nname = "r1"\naction = "skip"\nwhen = { field = "shoe.size", equals = 1 }',
            "r1",
            "when.field",
        ),
        (BASE + '[[rules]]\nname = "r1"\naction = "skip"\nwhen = { field = "order.x", in = 1 }', "r1", "when.in"),
        (
            BASE + '[[rules]]\nname = "r1"\naction = "skip"\nwhen = { field = "order.x", matches = "(" }',
            "r1",
            "when.matches",
        ),
        (
            BASE + '[[rules]]\nname = "r1"\naction = "skip"\nwhen = { all = [{ field = "order.x" }] }',
            "r1",
            "when.all[0]",
        ),
        (BASE + '[[rules]]\nname = "r1"\naction = "skip"\ntopics = ["customers.create"]', "r1", "topics"),
        (BASE + '[[rules]]\nname = "r1"\naction = "skip"\nstrategy = "newest"', "r1", "strategy"),
        (BASE + '[[rules]]\nname = "r1"\naction = "use_wallet_source"\nstrategy = "random"', "r1", "strategy"),
        (BASE + '[[rules]]\nname = "r1"\naction = "skip"\ncolour = "red"', "r1", "colour"),
        (BASE + '[[rules]]\nname = "r1"\naction = "skip"\n[[rules]]\nname = "r1"\naction = "skip"', "r1", "name"),
        (BASE + '[[rules]]\naction = "skip"', "#1", "name"),
    ],
)
def test_invalid_policies_name_rule_and_field(text, rule, field):
    import tomllib

    with pytest.raises(PolicyError) as exc:
        parse_policy(tomllib.loads(text))
    assert exc.value.rule == rule and exc.value.field == field
    if rule:
        assert repr(rule) in str(exc.value)


def test_load_policy_reports_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("version = ")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")


def test_required_includes_follow_fields():
    p = policy(
        BASE
        + """
    [[rules]]
    name = "r"
    action = "save_payment_source"
    when = { all = [{ field = "market.code", equals = "eu" }, { field = "line_items.count", gt = 0 }] }
    """
    )
    assert p.required_includes() == [
        "available_customer_payment_sources",
        "available_customer_payment_sources.payment_source",
        "customer",
        "line_items",
        "market",
        "payment_source",
    ]


def test_a_matches_pattern_takes_linear_time_on_shopper_input(tmp_path):
    # `(a+)+$` backtracks exponentially in Python's `re` on "aaaa...!": a shopper's note or SKU
    # must not stall the worker. Run in a child process so a stall fails the test instead of
    # hanging it.
    import subprocess
    import sys

    script = textwrap.dedent("""
        import time, tomllib
        from support.builders import order_document
        from webhook_app.events import Event
        from webhook_app.policy import parse_policy
        p = parse_policy(tomllib.loads('''
        version = 1
        [default]
        action = "skip"
        [[rules]]
        name = "evil"
        action = "skip"
        when = { field = "order.metadata.note", matches = "^(a+)+$" }
        '''))
        e = Event.from_document("orders.place", order_document("o1", metadata={"note": "a" * 40 + "!"}))
        t = time.monotonic()
        d = p.decide(e)
        print(round(time.monotonic() - t, 3), d.rule)
    """)
    tests = str(__import__("pathlib").Path(__file__).parent)
    try:
        r = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=20,
            env={"PYTHONPATH": tests, **base_env()},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("deciding took over 20 s: the pattern backtracked exponentially")
    assert r.returncode == 0, r.stderr
    seconds, rule = r.stdout.split()
    assert float(seconds) < 0.5 and rule == "default"


@pytest.mark.parametrize("pattern", [r"(a)\1", r"foo(?=bar)", r"(?<!x)y"])
def test_patterns_re2_cannot_run_in_linear_time_are_refused_at_load(pattern):
    text = BASE + f'[[rules]]\nname = "r"\naction = "skip"\nwhen = {{ field = "order.id", matches = \'{pattern}\' }}\n'
    with pytest.raises(PolicyError, match="RE2"):
        policy(text)
