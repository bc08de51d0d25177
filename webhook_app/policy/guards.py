"""The guards: what must not happen whatever a rule says, each refusal recorded with its reason."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from webhook_app.events import Event, Resource
from webhook_app.policy import expiry, readiness, wallet
from webhook_app.policy.decision import SAVE, USE_WALLET, WALLET_SOURCE_TYPES, Decision


def apply_guards(
    decision: Decision,
    event: Event,
    *,
    wallet_source_types: Iterable[str] = WALLET_SOURCE_TYPES,
    wallet_match: Sequence[str] = wallet.DEFAULT_MATCH,
) -> Decision:
    """Refuse actions that cannot or must not happen, whatever the rule said."""
    if not decision.calls_commerce_layer:
        return decision
    if event.is_guest:
        return decision.guarded("guest_order", "guest orders have no wallet")
    if event.customer is None:
        return decision.guarded("no_customer", "the order has no customer")
    if decision.action == SAVE:
        guarded = _guard_save(decision, event, set(wallet_source_types), wallet_match)
        if guarded is not None:
            return guarded
    if decision.action == USE_WALLET and event.wallet is not None:
        return _pick_entry(decision, event, event.wallet)
    return decision


def _guard_save(
    decision: Decision, event: Event, wallet_source_types: set[str], wallet_match: Sequence[str]
) -> Decision | None:
    """A save refused for its payment source, or by `save_guards`; None if it may go ahead."""
    if not event.payment_source_type:
        return decision.guarded("no_payment_source", "the order has no payment source")
    if event.payment_source_type not in wallet_source_types:
        return decision.guarded("no_wallet_flow", f"{event.payment_source_type} has no documented wallet flow")
    return save_guards(decision, event, wallet.look_up(event, wallet_match))


def _pick_entry(decision: Decision, event: Event, entries: Sequence[Resource]) -> Decision:
    """The wallet entry a use-wallet decision uses, or why there is none."""
    # An entry whose card has expired by the time of use is never chosen
    # (docs/explanation/worker.md, *Expired cards are never reused*).
    split = expiry.split_expired(entries, event)
    chosen = choose_wallet_entry(split.usable, decision.strategy or "newest")
    if chosen is None:
        if split.expired and not split.usable:
            return decision.guarded(
                "wallet_card_expired",
                f"every wallet entry's card has expired by the time of use: {split.describe_expired()}",
            )
        return decision.guarded("no_wallet_entry", f"no wallet entry fits strategy {decision.strategy or 'newest'}")
    if split.expired:
        decision = replace(decision, reason=f"{decision.reason}; passed over {split.describe_expired()}")
    if wallet.entry_is_order_source(chosen, event):
        return replace(
            decision.guarded("already_using_wallet_entry", f"payment source already is wallet entry {chosen.id}"),
            wallet_entry_id=chosen.id,
        )
    return replace(decision, wallet_entry_id=chosen.id)


def save_guards(decision: Decision, event: Event, look: wallet.WalletLook, *, how: str = "") -> Decision | None:
    """The save's own guards, given what is known of the wallet: the source or its card is already
    an entry (`already_in_wallet`, `card_already_in_wallet`), or the gateway is not ready for it
    (`gateway_not_ready`, the reason naming the fix). None if the save may go ahead (so far)."""
    if look.in_wallet:
        guard = "card_already_in_wallet" if look.other_record else "already_in_wallet"
        what = "the same card as wallet entry" if look.other_record else "payment source is wallet entry"
        return replace(
            decision.guarded(guard, f"{what} {look.entry_id} (matched by {look.how}{how})"),
            wallet_entry_id=look.entry_id,
        )
    not_ready = readiness.check(event)
    if not_ready is not None:
        return decision.guarded("gateway_not_ready", f"{not_ready.code}: {not_ready.reason}")
    return None


def choose_wallet_entry(entries: Sequence[Resource], strategy: str) -> Resource | None:
    """Pick a wallet entry: `newest` / `oldest` by created_at, `only` if there is exactly one."""
    if not entries:
        return None
    if strategy == "only":
        return entries[0] if len(entries) == 1 else None
    dated = sorted(entries, key=lambda r: (str(r.attributes.get("created_at") or ""), r.id))
    return dated[-1] if strategy == "newest" else dated[0]
