"""The card claim around a save: one order at a time saves a given card into a customer's wallet.

Two orders of one customer paying with the same card, handled by two workers at once, would both
find the card missing from the wallet and both save it (two entries for one card). Before it
decides to save, the worker claims the card in the store, in the same transaction as the order's
save action (`begin_save`, `Store.begin_save`: a busy card gives the action back), keyed by the
organization, the customer and the card as the policy's `wallet_match` identifies it
(`wallet.card_key`; the whole customer when the card cannot be identified). The claim is held from
the decision to save until the save is verified or known to have failed (a save whose outcome is
unknown keeps it for its order's next attempt, at most a lease); a second order of that card is
deferred meanwhile (no attempt used) and, once it has the claim, reads the wallet before deciding,
so it finds the first order's entry (`card_already_in_wallet`).
See docs/explanation/worker.md, *One card, one entry*.
"""

from __future__ import annotations

from collections.abc import Sequence

from webhook_app.events import Event
from webhook_app.policy import wallet
from webhook_app.store import ActionClaim, CardClaim, ClaimHolder, Store


def begin_save(
    store: Store, event: Event, keys: Sequence[str], holder: ClaimHolder
) -> tuple[ActionClaim, CardClaim | None]:
    """The order's save action and, once it is acquired, its card (`claim_card`), in one
    transaction (`Store.begin_save`): a busy card gives the action back in it."""
    customer = event.customer_id
    return store.begin_save(
        holder, None if customer is None else (customer, wallet.card_key(event.payment_source, keys))
    )
