"""What a decision did to a wallet, in the words of the wallet activity (admin page, /metrics).

Commerce Layer sends no `customer_payment_sources.*` topic, so the service's own decisions are the
record of what it did to wallets: a save applied (`saved`), an entry made the order's payment
source (`reused`), a save or reuse refused by a guard or by Commerce Layer (`save_refused`,
`reuse_refused`, with the guard or the outcome as the reason). A guard turns the decision into a
skip, so which action was refused is told by the guard where only one action has it, else by
the rule's action in the current policy. Expired entries found and removed come from the
operations log (`wallet expired`).
"""

from __future__ import annotations

from collections.abc import Mapping

from webhook_app.policy.decision import SAVE, USE_WALLET
from webhook_app.policy.rules import Policy
from webhook_app.states import DecisionOutcome

SAVED = "saved"
REUSED = "reused"
SAVE_REFUSED = "save_refused"
REUSE_REFUSED = "reuse_refused"
EXPIRED_FOUND = "expired_found"
EXPIRED_REMOVED = "expired_removed"
ACTIVITIES = (SAVED, REUSED, SAVE_REFUSED, REUSE_REFUSED, EXPIRED_FOUND, EXPIRED_REMOVED)

# Guards only one of the two actions has (guards.py, worker/save.py, worker/reuse.py).
SAVE_GUARDS = frozenset(
    {"no_payment_source", "no_wallet_flow", "already_in_wallet", "card_already_in_wallet", "gateway_not_ready"}
)
USE_GUARDS = frozenset({"no_wallet_entry", "already_using_wallet_entry", "wallet_card_expired"})
# A save Commerce Layer accepted without an entry appearing, or a call that ended dead-lettered.
REFUSING_OUTCOMES = frozenset({DecisionOutcome.FAILED, DecisionOutcome.SAVED_WITHOUT_ENTRY})


def rule_actions(policy: Policy | None) -> dict[str, str]:
    """Each rule's action (and the default's), by rule name."""
    if policy is None:
        return {}
    out = {r.name: r.action for r in policy.rules}
    out[policy.default.rule] = policy.default.action
    return out


def classify(
    rule: str, action: str, outcome: str, guard: str | None, actions: Mapping[str, str]
) -> tuple[str, str] | None:
    """(activity, reason) of one decision, or None when it is not wallet activity (or a refusal
    whose action cannot be told: a shared guard on a rule the policy no longer has)."""
    if guard is not None:
        if guard in SAVE_GUARDS:
            return SAVE_REFUSED, guard
        if guard in USE_GUARDS:
            return REUSE_REFUSED, guard
        intended = actions.get(rule)
        if intended == SAVE:
            return SAVE_REFUSED, guard
        if intended == USE_WALLET:
            return REUSE_REFUSED, guard
        return None
    if action == SAVE:
        if outcome == DecisionOutcome.APPLIED:
            return SAVED, ""
        if outcome in REFUSING_OUTCOMES:
            return SAVE_REFUSED, outcome
    elif action == USE_WALLET:
        if outcome == DecisionOutcome.APPLIED:
            return REUSED, ""
        if outcome in REFUSING_OUTCOMES:
            return REUSE_REFUSED, outcome
    return None
