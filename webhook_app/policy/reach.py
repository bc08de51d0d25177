"""Can a rule ever act? What `policy check` and `doctor` ask before they call a policy OK.

A rule that saves or reuses can still act on no order at all: its `when` may ask for what a guard
always refuses (guest orders, orders without a customer or payment source), its payment source
types may have no wallet flow, Braintree may be saved only once its nonce is spent, or an earlier
rule may take every order it could match. Each is found from the file alone, conservatively: only
what must hold (a comparison, or the comparisons under `all`) counts, so a rule named here can
really never act, and one not named may still act on no real order (`--samples` shows that).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from webhook_app.policy import readiness
from webhook_app.policy.decision import SAVE, SKIP

if TYPE_CHECKING:
    from webhook_app.policy.rules import Policy, Rule

# (field, operator, operand) that no guard lets through, and why.
_REFUSED = {
    ("order.guest", "equals", True): "it matches guest orders only, and guest orders have no wallet",
    ("customer.id", "exists", False): "it matches orders without a customer only",
    ("payment_source.id", "exists", False): "it matches orders without a payment source only",
    ("payment_source.type", "exists", False): "it matches orders without a payment source only",
}


def _must_hold(node: Any) -> list[Mapping[str, Any]]:
    """The comparisons a (compiled, so well-formed) `when` needs to hold for it to match."""
    if not isinstance(node, Mapping):
        return []
    if "all" in node:
        return [c for child in node["all"] for c in _must_hold(child)]
    if "field" in node:
        return [node]
    return []  # `any` and `not`: nothing definite


def always_refused(when: Any) -> str | None:
    """Why the guards refuse every order this `when` matches, or None."""
    for node in _must_hold(when):
        for (fld, op, operand), why in _REFUSED.items():
            value = node.get(op, not operand)
            if node["field"] == fld and isinstance(value, bool) and value is operand:
                return why
    return None


def _why_never(policy: Policy, n: int, rule: Rule) -> str | None:
    if rule.refused is not None:
        return rule.refused
    for earlier in policy.rules[:n]:
        covers = earlier.topics is None or (rule.topics is not None and rule.topics <= earlier.topics)
        if not earlier.fields and covers:  # no `when`: it matches every order on its topics
            return f"rule {earlier.name}, before it, takes every order it could match ({earlier.action})"
    if rule.action != SAVE:
        return None
    limited, excluded = rule.source_types
    types = (policy.wallet_source_types if limited is None else limited & policy.wallet_source_types) - excluded
    if not types:
        named = ", ".join(sorted(limited or ())) or "no type"
        return f"it saves {named} only, and none has a wallet flow (wallet_source_types)"
    if types == {readiness.BRAINTREE} and rule.topics is not None and rule.topics <= readiness.AFTER_PLACING:
        return "it saves braintree_payments sources only, and only once the order is placed, when the nonce is spent"
    return None


def never_acting(policy: Policy) -> list[str]:
    """`rule NAME: can never act: WHY` for each rule that saves or reuses and can act on no order."""
    out = []
    for n, rule in enumerate(policy.rules):
        if rule.action == SKIP:
            continue
        why = _why_never(policy, n, rule)
        if why is not None:
            out.append(f"rule {rule.name}: can never {rule.action}: {why}")
    return out


def acts(policy: Policy) -> bool:
    """Whether some order can be saved or reused: by the default, or by a rule that can act."""
    if policy.default.action != SKIP:
        return True
    return any(r.action != SKIP and _why_never(policy, n, r) is None for n, r in enumerate(policy.rules))
