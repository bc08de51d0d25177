"""The guards: what must not happen whatever a rule says, each refusal recorded with its reason."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from webhook_app.events import Event, Resource
from webhook_app.policy import wallet
from webhook_app.policy.decision import SAVE, USE_WALLET, WALLET_SOURCE_TYPES, Decision


def apply_guards(
    decision: Decision, event: Event, *, wallet_source_types: Iterable[str] = WALLET_SOURCE_TYPES
) -> Decision:
    """Refuse actions that cannot or must not happen, whatever the rule said."""
    if not decision.calls_commerce_layer:
        return decision
    if event.is_guest:
        return decision.guarded("guest_order", "guest orders have no wallet")
    if event.customer is None:
        return decision.guarded("no_customer", "the order has no customer")
    if decision.action == SAVE:
        if not event.payment_source_type:
            return decision.guarded("no_payment_source", "the order has no payment source")
        if event.payment_source_type not in set(wallet_source_types):
            return decision.guarded("no_wallet_flow", f"{event.payment_source_type} has no documented wallet flow")
        look = wallet.look_up(event)
        if look.in_wallet:
            return replace(
                decision.guarded(
                    "already_in_wallet", f"payment source is wallet entry {look.entry_id} (matched by {look.how})"
                ),
                wallet_entry_id=look.entry_id,
            )
    if decision.action == USE_WALLET and event.wallet is not None:
        chosen = choose_wallet_entry(event.wallet, decision.strategy or "newest")
        if chosen is None:
            return decision.guarded("no_wallet_entry", f"no wallet entry fits strategy {decision.strategy or 'newest'}")
        if wallet.entry_is_order_source(chosen, event):
            return replace(
                decision.guarded("already_using_wallet_entry", f"payment source already is wallet entry {chosen.id}"),
                wallet_entry_id=chosen.id,
            )
        return replace(decision, wallet_entry_id=chosen.id)
    return decision


def choose_wallet_entry(entries: Sequence[Resource], strategy: str) -> Resource | None:
    """Pick a wallet entry: `newest` / `oldest` by created_at, `only` if there is exactly one."""
    if not entries:
        return None
    if strategy == "only":
        return entries[0] if len(entries) == 1 else None
    dated = sorted(entries, key=lambda r: (str(r.attributes.get("created_at") or ""), r.id))
    return dated[-1] if strategy == "newest" else dated[0]
