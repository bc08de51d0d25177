"""Saving the order's payment source to the customer's wallet (the `save` action), once.

One order at a time saves a given card: the save starts by claiming the customer's card
(claims.py), and a second order of that card waits meanwhile, then finds the first one's entry.
The webhook body tells whether the card is in the wallet already only if it carried the wallet
with each entry's linkage (or the gateway tokens to compare) and no save of this card was claimed
before (`fresh`: an earlier save may postdate the body); otherwise, and always after an attempt
whose outcome is unknown, one read of the order decides before writing. Every save is verified:
its answer (or, failing that, one more read) must show a wallet entry for the source, else the
decision is recorded as `saved_without_entry` with what was seen
(docs/explanation/worker.md, *Every save verified*).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from webhook_app.errors import CommerceLayerError, NotSent
from webhook_app.events import Event
from webhook_app.policy import SAVE, Decision, wallet
from webhook_app.policy.guards import save_guards
from webhook_app.states import DecisionOutcome
from webhook_app.worker.attempt import Attempt, Outcome

log = logging.getLogger("webhook_app.worker")

# A save Commerce Layer answered without error, after which no wallet entry for the source appears.
SAVED_WITHOUT_ENTRY = DecisionOutcome.SAVED_WITHOUT_ENTRY


def save(attempt: Attempt, event: Event, decision: Decision, *, uncertain: bool, fresh: bool) -> Outcome:
    """Save the payment source to the wallet, unless it is there already; the action and the
    customer's card are claimed for this order (process.enforce, claims.py). Read first unless the
    body tells (`fresh`: no other order of this card has saved it since), then PATCH and verify."""
    before = event
    look = wallet.look_up(event, attempt.tenant.policy.wallet_match)
    if uncertain or not look.known or not fresh:
        before = attempt.read_order(event)
        look = wallet.look_up(before, attempt.tenant.policy.wallet_match)
        if not look.known:
            log.warning(
                "wallet entries came without payment_source linkage though it was included",
                extra={"order_id": event.order_id},
            )
        if uncertain and look.entry_id is not None and not look.other_record:  # in the wallet, from this card
            settled = replace(
                decision, reason=f"{decision.reason}; an earlier attempt had already applied it", guard=None
            )
            return attempt.applied(settled, look.entry_id, SAVE)
        refused = save_guards(decision, before, look, how=", read before writing")
        if refused is not None:
            return attempt.guarded(refused, SAVE)
    try:  # sent only while this job still holds the order's save and the card (attempt.heartbeat)
        doc = attempt.client.update_order(
            event.order_id,
            {"_save_payment_source_to_customer_wallet": True},
            include=list(wallet.SAVE_INCLUDES),
            confirm=attempt.heartbeat,
        )
    except NotSent:
        return attempt.lost(decision)
    entry_id = saved_entry_id(doc, before)
    if entry_id is None:
        return _verify(attempt, event, decision, doc, before)
    return attempt.applied(decision, entry_id, SAVE)


def _verify(attempt: Attempt, event: Event, decision: Decision, doc: dict[str, Any], before: Event) -> Outcome:
    """The save's answer showed no entry for this payment source: look once more, and if the
    wallet still has none, record `saved_without_entry` with what was seen. The action is
    marked done so that it is not retried blindly; what the operator should do is in
    docs/explanation/worker.md, *Every save verified*."""
    seen: Event | None = None
    read = ""
    try:
        seen = attempt.read_order(event)
    except CommerceLayerError as exc:
        # The save was accepted: failing here must not release the action for another save.
        read = f"failed: {exc}"
    if seen is not None:
        entry_id = saved_entry_id(doc, before, seen)
        if entry_id is not None:
            return attempt.applied(decision, entry_id, SAVE)
        read = _entries(seen, "no wallet")
    shown = _entries(Event.from_document(event.topic, doc), "no wallet")
    was = _entries(before, "unknown")
    source = f"{event.payment_source_type} {event.payment_source.id}" if event.payment_source else "none"
    d = replace(
        decision,
        reason=(
            f"{decision.reason}; saved but no wallet entry appeared for payment source {source}: "
            f"wallet before [{was}], in the answer [{shown}], read after [{read}]"
        ),
    )
    return attempt.finish(d, SAVED_WITHOUT_ENTRY, action=SAVE)


def _entries(order: Event, unknown: str) -> str:
    """The order's wallet entry ids, comma-separated; `unknown` when the order came without its wallet."""
    return ", ".join(e.id for e in order.wallet or ()) if order.wallet is not None else unknown


def saved_entry_id(doc: dict[str, Any], before: Event, read: Event | None = None) -> str | None:
    """The wallet entry the save's answer shows for this order's payment source.

    The answer was asked for each entry's `payment_source` linkage, so the entry made from this
    source is found by linkage (or gateway token); failing that, the newest entry that was not in
    the wallet before (when the wallet before is known)."""
    answer = read or Event.from_document(before.topic, doc)
    look = wallet.look_up(
        replace(answer, payment_source=answer.payment_source or before.payment_source), (wallet.GATEWAY_TOKEN,)
    )
    if look.other_record:
        look = replace(look, entry_id=None)
    if look.in_wallet:
        return look.entry_id
    if before.wallet is None:
        return None
    chosen = wallet.newest_fresh_entry(answer.wallet or (), (e.id for e in before.wallet))
    return chosen.id if chosen else None
