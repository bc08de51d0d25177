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
from webhook_app.policy.model import check_field, load_model

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
