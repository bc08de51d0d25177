"""The decision: the rule language (`rules`), the guards no rule overrides (`guards`), and whether
a payment source is already in the wallet (`wallet`). Pure: no I/O, no Flask, requests or driver."""

from webhook_app.policy.decision import (
    ACTIONS,
    SAVE,
    SKIP,
    STRATEGIES,
    USE_WALLET,
    WALLET_SOURCE_TYPES,
    Decision,
)
from webhook_app.policy.guards import apply_guards, choose_wallet_entry
from webhook_app.policy.rules import Policy, Rule, load_policy, parse_policy

__all__ = [
    "ACTIONS",
    "SAVE",
    "SKIP",
    "STRATEGIES",
    "USE_WALLET",
    "WALLET_SOURCE_TYPES",
    "Decision",
    "Policy",
    "Rule",
    "apply_guards",
    "choose_wallet_entry",
    "load_policy",
    "parse_policy",
]
