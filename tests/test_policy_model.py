"""Policies checked against Commerce Layer's resource model (webhook_app/policy/model.py): a field a
resource does not have, or an order topic Commerce Layer does not send, is an error naming the line
and the nearest valid names; the shipped model agrees with the reference it was derived from."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from support import DATA, resource_model

from webhook_app.config import bundled_policy_path
from webhook_app.errors import PolicyError, PolicyModelError
from webhook_app.events import Event
from webhook_app.policy import load_policy, parse_policy
from webhook_app.policy.model import OPENAPI_KINDS, check_field, load_model

ROOT = Path(__file__).parent.parent
SHARED = Path("/work/shared/commercelayer")
BASE = 'version = 1\n[default]\naction = "skip"\n'


def rule(when: str, *, topics: str = "") -> str:
    return BASE + f'[[rules]]\nname = "r1"\naction = "save_payment_source"\n{topics}when = {when}\n'


def test_a_misspelt_attribute_is_an_error_with_its_line_and_the_nearest_name(tmp_path):
    p = tmp_path / "typo.toml"
    p.write_text(rule('{ field = "order.gest", equals = false }'))
    with pytest.raises(PolicyModelError) as exc:
        load_policy(p)
    assert exc.value.problems == (
        f'{p}:7: rule \'r1\': order.gest: orders have no attribute "gest"; did you mean "guest"?',
    )
    assert str(exc.value) == exc.value.problems[0] and isinstance(exc.value, PolicyError)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("customer.emial", 'customers have no attribute "emial"; did you mean "email"?'),
        ("market.cod", 'markets have no attribute "cod"; did you mean "code"?'),
        ("line_items.sku_cod", 'line items have no attribute "sku_cod"; did you mean "sku_code"?'),
        ("wallet.nme", 'wallet entries (customer_payment_sources) have no attribute "nme"; did you mean "name"?'),
        ("payment_source.auth_tokn", 'no payment source type has an attribute "auth_tokn"; did you mean "auth_token"'),
        ("order.zzzz", 'orders have no attribute "zzzz"'),
        ("order._place", '"_place" is write-only on orders: Commerce Layer never sends it'),
        (
            "order.customer.email",
            "relationship of orders, not an attribute; the included customer is read as `customer.*`",
        ),
        ("order.shipping_address.city", '"shipping_address" is a relationship of orders, not an attribute'),
        ("order.guest.yes", '"guest" is a boolean, it has no keys such as "yes"'),
        ("order.id.x", '"id" has no keys'),
    ],
)
def test_fields_the_resources_do_not_have(field, message):
    with pytest.raises(PolicyModelError) as exc:
        parse_policy(tomllib.loads(rule(f'{{ field = "{field}", exists = true }}')))
    assert exc.value.problems[0].startswith(f"rule 'r1', field 'when.field': {field}: ")
    assert message in exc.value.problems[0]
    assert "did you mean" not in exc.value.problems[0] or "?" in exc.value.problems[0]


@pytest.mark.parametrize(
    "field",
    [
        "order.guest",
        "order.id",
        "order.type",
        "order.metadata.vip",
        "order.payment_source_details.type",
        "order.total_amount_cents",
        "customer.email",
        "customer.metadata.tier",
        "market.code",
        "line_items.sku_code",
        "line_items.count",
        "wallet.count",
        "wallet.payment_source_token",
        "payment_source.type",
        "payment_source.payment_instrument.card_type",
        "payment_source.options.setup_future_usage",
        "payment_source.payment_method_nonce",
        "topic",
    ],
)
def test_fields_the_resources_have(field):
    assert check_field(tuple(field.split("."))) is None
    parse_policy(tomllib.loads(rule(f'{{ field = "{field}", exists = true }}')))


def test_every_problem_is_listed_with_its_own_line(tmp_path):
    p = tmp_path / "many.toml"
    p.write_text(
        BASE
        + '[[rules]]\nname = "a"\ntopics = ["orders.plce"]\naction = "skip"\n'
        + 'when = { field = "order.gest", equals = false }\n'
        + '[[rules]]\nname = "b"\naction = "skip"\n'
        + "[rules.when]\nall = [\n"
        + '  { field = "order.status", equals = "placed" },\n'
        + '  { not = { field = "order.gest", equals = true } },\n'
        + "]\n"
    )
    with pytest.raises(PolicyModelError) as exc:
        load_policy(p)
    assert [re.sub(r":.*", "", line.removeprefix(f"{p}:")) for line in exc.value.problems] == ["6", "8", "15"]
    assert (
        'orders.plce: Commerce Layer sends no order topic "orders.plce"; did you mean "orders.place"'
        in (exc.value.problems[0])
    )
    assert "(and 2 more" in str(exc.value)


def test_a_payment_source_field_some_types_lack_is_valid_with_a_warning():
    only_klarna = parse_policy(tomllib.loads(rule('{ field = "payment_source.auth_token", exists = true }')))
    assert [w for w in only_klarna.warnings() if "auth_token" in w] == [
        'rule r1: payment_source.auth_token: only klarna_payments have "auth_token"; '
        "on other payment sources it is missing"
    ]
    limited = parse_policy(
        tomllib.loads(
            rule(
                '{ all = [{ field = "payment_source.type", equals = "klarna_payments" },'
                ' { field = "payment_source.auth_token", exists = true }] }'
            )
        )
    )
    assert [w for w in limited.warnings() if "auth_token" in w] == []
    assert load_model().types_with("payment_instrument") == frozenset(load_model().payment_source_types)


def test_the_bundled_and_deployed_policies_pass():
    for path in (bundled_policy_path(), ROOT / "deploy" / "k8s" / "policy.toml"):
        assert load_policy(path).rules, path
    assert load_policy(bundled_policy_path()).warnings() == []


def test_the_documented_policy_example_passes():
    section = (ROOT / "docs" / "reference" / "policy.md").read_text()
    example = section[section.index("```toml") + len("```toml") : section.index("```", section.index("```toml") + 7)]
    assert len(parse_policy(tomllib.loads(example)).rules) == 3


def test_a_policy_on_the_real_sample_reads_attributes_it_has():
    # Every attribute of every resource in Commerce Layer's own webhook body is in the model.
    doc = json.loads((DATA / "orders.place.guest-wire-transfer.json").read_text())
    event = Event.from_document("orders.place", doc)
    roots = {"order": [event.order], "customer": [event.customer], "market": [event.market]}
    roots["line_items"] = list(event.line_items)
    for root, resources in roots.items():
        for res in resources:
            assert res is not None
            for name in res.attributes:
                assert check_field((root, name)) is None, (root, name)


def test_the_shipped_model_is_derived_from_the_reference():
    reference = SHARED / "resources.json"
    if not reference.exists():
        pytest.skip("the reference resources.json is not on this machine")
    derived = resource_model.render(resource_model.derive(json.loads(reference.read_text())))
    assert (ROOT / "webhook_app" / "data" / "resources.json").read_text() == derived, (
        "regenerate: python tests/support/resource_model.py"
    )


# --- values of the wrong type for their field (webhook_app/policy/operands.py) ------------------


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        # a number field compared with a string
        (
            '{ field = "order.total_amount_cents", gte = "100" }',
            'order.total_amount_cents is an integer, but `gte` is given the string "100": a value of another type '
            "never compares with it, so the condition never holds; write gte = 100 (unquoted)",
        ),
        (
            '{ field = "order.total_amount_float", equals = "99.5" }',
            'order.total_amount_float is a number, but `equals` is given the string "99.5"',
        ),
        # a boolean field compared with a string, or a number
        (
            '{ field = "order.guest", equals = "yes" }',
            'order.guest is a boolean, but `equals` is given the string "yes": a value of another type never '
            "compares with it, so the condition never holds; write equals = true (unquoted)",
        ),
        (
            '{ field = "order.guest", not_equals = 0 }',
            "order.guest is a boolean, but `not_equals` is given the integer 0: a value of another type never "
            "compares with it, so the condition always holds",
        ),
        ('{ field = "order.guest", gt = 0 }', "order.guest is a boolean: booleans have no order, so `gt` never holds"),
        # a string field compared with a number
        (
            '{ field = "market.code", equals = 5 }',
            "market.code is a string, but `equals` is given the integer 5: a value of another type never compares "
            'with it, so the condition never holds; write equals = "5" (quoted)',
        ),
        ('{ field = "topic", equals = 1 }', "topic is a string, but `equals` is given the integer 1"),
        ('{ field = "payment_source.type", equals = true }', "payment_source.type is a string, but `equals` is given"),
        # each value of a list operator
        (
            '{ field = "line_items.count", in = [1, "2"] }',
            'line_items.count is an integer, but `in` lists the string "2": a value of another type never compares '
            "with it, so the condition never holds",
        ),
        (
            '{ field = "line_items.quantity", not_in = ["1"], quantifier = "all" }',
            'line_items.quantity is an integer, but `not_in` lists the string "1"',
        ),
        ('{ field = "wallet.name", in = ["visa", 4] }', "wallet.name is a string, but `in` lists the integer 4"),
        # a date-time is text in the body: an unquoted TOML date-time never equals it
        (
            '{ field = "order.placed_at", equals = 2024-01-01T00:00:00Z }',
            "order.placed_at is a date-time (an ISO 8601 string in the body), but `equals` is given the unquoted "
            "TOML date-time 2024-01-01T00:00:00+00:00: a value of another type never compares with it, so the "
            'condition never holds; quote it, as the body writes date-times: "2022-09-30T21:11:55.783Z"',
        ),
        # text operators and objects
        (
            '{ field = "order.total_amount_cents", matches = "^1" }',
            "order.total_amount_cents is an integer: `matches` reads text only, so the condition never holds",
        ),
        (
            '{ field = "order.metadata", equals = "vip" }',
            "order.metadata is an object: it equals no single value, so `equals` never holds; compare "
            "`order.metadata.KEY`, or test it with `exists`",
        ),
        ('{ field = "customer.metadata", not_in = ["x"] }', "so `not_in` always holds"),
    ],
)
def test_a_value_of_the_wrong_type_is_an_error_naming_the_field_its_type_and_the_value(tmp_path, condition, message):
    # Before: accepted ("policy OK"), and the condition silently never matched (or always did).
    p = tmp_path / "types.toml"
    p.write_text(rule(condition))
    with pytest.raises(PolicyModelError) as exc:
        load_policy(p)
    assert len(exc.value.problems) == 1
    assert exc.value.problems[0].startswith(f"{p}:7: rule 'r1': "), exc.value.problems
    assert message in exc.value.problems[0], exc.value.problems[0]


@pytest.mark.parametrize("op", ["in", "not_in"])
def test_a_list_operator_given_a_single_value_names_the_field_and_the_value(op):
    with pytest.raises(PolicyError) as exc:
        parse_policy(tomllib.loads(rule(f'{{ field = "market.code", {op} = "eu" }}')))
    assert str(exc.value) == (
        f"rule 'r1', field 'when.{op}': market.code: `{op}` needs a list of values, got the string \"eu\"; "
        f'write {op} = ["eu"]'
    )


@pytest.mark.parametrize(
    "condition",
    [
        '{ field = "order.total_amount_cents", gte = 100 }',
        '{ field = "order.total_amount_cents", gt = 99.5 }',  # an integer compares with any number
        '{ field = "order.total_amount_float", lt = 100 }',
        '{ field = "order.guest", equals = false }',
        '{ field = "order.status", in = ["placed", "approved"] }',
        '{ field = "order.status", gt = "a" }',  # strings have an order
        '{ field = "order.placed_at", gte = "2024-01-01" }',
        '{ field = "order.customer_email", matches = "@example\\\\.com$" }',
        '{ field = "order.metadata", exists = true }',
        '{ field = "order.guest", exists = false }',
        '{ field = "order.id", equals = "wBXVhZOmXO" }',
        '{ field = "line_items.count", in = [1, 2] }',
        '{ field = "payment_source.type", in = ["stripe_payments"] }',
        # resources.json says string, the OpenAPI schema integer: both are accepted
        '{ field = "order.number", equals = 12345 }',
        '{ field = "order.number", equals = "12345" }',
    ],
)
def test_a_value_of_the_fields_type_is_accepted_without_a_note(condition):
    policy = parse_policy(tomllib.loads(rule(condition)))
    assert policy.notes() == []


def test_every_type_mismatch_is_listed_with_its_own_line_and_the_fields_nth_use(tmp_path):
    p = tmp_path / "many.toml"
    p.write_text(
        BASE
        + '[[rules]]\nname = "a"\naction = "skip"\n'
        + 'when = { field = "order.guest", equals = false }\n'  # line 7: fine
        + '[[rules]]\nname = "b"\naction = "skip"\n'
        + "[rules.when]\nall = [\n"
        + '  { field = "order.status", equals = "placed" },\n'
        + '  { field = "order.guest", equals = "no" },\n'  # line 14: the second use of order.guest
        + '  { not = { field = "order.total_amount_cents", lt = "5" } },\n'  # line 15
        + "]\n"
    )
    with pytest.raises(PolicyModelError) as exc:
        load_policy(p)
    assert [line.removeprefix(f"{p}:").split(": ")[0:2] for line in exc.value.problems] == [
        ["14", "rule 'b'"],
        ["15", "rule 'b'"],
    ]
    assert "write equals = false (unquoted)" in exc.value.problems[0]


def test_a_field_the_model_gives_no_type_is_accepted_with_a_note():
    policy = parse_policy(
        tomllib.loads(
            rule(
                '{ all = [{ field = "order.metadata.vip", equals = "yes" },'
                ' { field = "order.metadata.vip", equals = "true" },'
                ' { field = "payment_source.payment_instrument.card_type", in = ["visa"] },'
                ' { field = "order.metadata.tier", exists = true }] }'
            )
        )
    )
    assert policy.notes() == [
        "rule r1: order.metadata.vip: the resource model gives no type for it, so the type of the value it is "
        "compared with is not checked",
        "rule r1: payment_source.payment_instrument.card_type: the resource model gives no type for it, so the "
        "type of the value it is compared with is not checked",
    ]


def test_policy_check_refuses_a_type_mismatch_and_notes_an_unchecked_field(tmp_path, capsys):
    from webhook_app.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text(rule('{ field = "order.total_amount_cents", gte = "100" }', topics='topics = ["orders.place"]\n'))
    assert main(["policy", "check", str(bad)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith(f"webhook-app: invalid policy: {bad}:8: rule 'r1': order.total_amount_cents is an ")
    assert out.err.count("\n") == 1
    noted = tmp_path / "noted.toml"
    noted.write_text(rule('{ field = "order.metadata.vip", equals = true }', topics='topics = ["orders.pending"]\n'))
    assert main(["policy", "check", str(noted)]) == 0
    out = capsys.readouterr()
    assert out.out == "policy OK: 1 rules\n"
    assert out.err == (
        "note: rule r1: order.metadata.vip: the resource model gives no type for it, so the type of the value it "
        "is compared with is not checked\n"
    )


def test_the_shipped_example_policies_pass_the_type_checks():
    for path in (bundled_policy_path(), ROOT / "deploy" / "k8s" / "policy.toml"):
        assert load_policy(path).rules and load_policy(path).notes() == [], path
    example = load_policy(ROOT / "docs" / "examples" / "reuse-wallet-policy.toml")
    assert [n.split(": ")[1] for n in example.notes()] == ["order.metadata.subscription"]


def test_the_openapi_types_the_model_adds_are_where_the_schema_disagrees_with_resources_json():
    openapi = SHARED / "openapi.json"
    if not openapi.exists():
        pytest.skip("Commerce Layer's openapi.json is not on this machine")
    schemas = json.loads(openapi.read_text())["components"]["schemas"]
    same = {("float", "number"), ("datetime", "string")}
    found = {}
    for plural, shape in load_model().shapes.items():
        words = plural.removesuffix("s").split("_")
        schema = schemas.get(words[0] + "".join(w.title() for w in words[1:]))
        if schema is None:
            continue
        properties = schema["properties"]["data"]["properties"]["attributes"]["properties"]
        for name, kind in shape.attributes.items():
            other = properties.get(name, {}).get("type")
            if other is not None and other != kind and (kind, other) not in same:
                found[(plural, name)] = other
    assert found == OPENAPI_KINDS
