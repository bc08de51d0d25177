"""Reusing a wallet entry: make one of the customer's wallet entries the order's payment source
(the `use_wallet` action), once.

The policy chose the entry from the webhook body. When the body came without the wallet, or an
earlier attempt's outcome is unknown, one read of the order decides again: after an unknown
outcome, an order that already pays from a wallet entry is done (never a second, different
entry); otherwise the entry is chosen again from the wallet as read, less the entries whose card
has expired by the time of use (the later of the order's time and now).
"""

from __future__ import annotations

from dataclasses import replace

from webhook_app.errors import NotSent
from webhook_app.events import Event
from webhook_app.policy import USE_WALLET, Decision, choose_wallet_entry, expiry, wallet
from webhook_app.worker.attempt import Attempt, Outcome


def use_wallet_entry(attempt: Attempt, event: Event, decision: Decision, *, uncertain: bool) -> Outcome:
    """Make a wallet entry the order's payment source (once)."""
    entry_id = decision.wallet_entry_id
    if uncertain or event.wallet is None:
        current = attempt.read_order(event)
        paying = wallet.order_source_entry(current) if uncertain else None
        if paying is not None:
            # An earlier use may have been applied: the read settles it. Whichever entry that
            # call (this job's or another's) chose, the order now pays from the wallet: done,
            # never a second, different entry.
            settled = replace(
                decision, reason=f"{decision.reason}; an earlier attempt had already applied wallet entry {paying.id}"
            )
            return attempt.applied(settled, paying.id, USE_WALLET)
        entry_id, refusal = choose_again(current, decision)
        if refusal is not None:
            return attempt.guarded(refusal, USE_WALLET)
    if entry_id is None:
        none_fits = decision.guarded("no_wallet_entry", "the customer's wallet has no entry that fits")
        return attempt.guarded(none_fits, USE_WALLET)
    try:  # sent only while this job still holds the order's action (attempt.heartbeat)
        attempt.client.update_order(
            event.order_id, {"_customer_payment_source_id": entry_id}, confirm=attempt.heartbeat
        )
    except NotSent:
        return attempt.lost(decision)
    return attempt.applied(decision, entry_id, USE_WALLET)


def choose_again(current: Event, decision: Decision) -> tuple[str | None, Decision | None]:
    """The entry to use in the wallet as read (`current`), less the entries whose card has expired
    by the time of use: the decision's own if still usable, else by its strategy. Or the guard
    that stops the use: the order already pays with that entry, or every entry has expired."""
    split = expiry.split_expired(current.wallet or (), current)
    wanted = decision.wallet_entry_id
    chosen = next((e for e in split.usable if e.id == wanted), None) if wanted else None
    chosen = chosen or choose_wallet_entry(split.usable, decision.strategy or "newest")
    if chosen is not None and wallet.entry_is_order_source(chosen, current):
        already = decision.guarded("already_using_wallet_entry", f"payment source already is wallet entry {chosen.id}")
        return chosen.id, replace(already, wallet_entry_id=chosen.id)
    if chosen is None and split.expired:
        expired = ", ".join(e.id for e, _ in split.expired)
        return None, decision.guarded("wallet_card_expired", f"every wallet entry's card has expired ({expired})")
    return (chosen.id if chosen else None), None
