"""Claims in SQL: one Commerce Layer call in flight per order and action, one save of a card at
a time per customer, and named leases.

Each claim's statements are a function on the caller's transaction (`_take_action`,
`_give_back_action`, `_take_card`), so `begin_save` can take the action and the card in one
transaction: one synced commit instead of two, and a busy card gives the action back in it."""

from __future__ import annotations

from webhook_app.policy.decision import SAVE
from webhook_app.states import ActionState, CardState, ClaimStatus
from webhook_app.store.base import ActionClaim, CardClaim, ClaimHolder
from webhook_app.store.ports import Claims
from webhook_app.store.sql.cursor import Cursorish, SQLBase


class SQLClaims(SQLBase, Claims):
    def begin_action(self, holder: ClaimHolder, action: str) -> ActionClaim:
        with self._tx() as c:
            return _take_action(c, self.dialect.lock_row, holder, action)

    def release_action(
        self, holder: ClaimHolder, action: str, *, uncertain: bool, hold_until: float | None = None
    ) -> None:
        with self._tx() as c:
            _give_back_action(c, holder, action, uncertain=uncertain, hold_until=hold_until)

    def action_state(self, order_id: str, action: str, *, organization: str = "") -> ActionState | None:
        with self._tx(write=False) as c:
            row = c.one(
                "SELECT state FROM order_actions WHERE organization = ? AND order_id = ? AND action = ?",
                (organization, order_id, action),
            )
            return None if row is None else ActionState(row["state"])

    def claim_card(self, holder: ClaimHolder, customer_id: str, card_key: str) -> CardClaim:
        with self._tx() as c:
            self._serialize(c, f"card\x00{holder.organization}\x00{customer_id}")
            return _take_card(c, holder, customer_id, card_key)

    def begin_save(self, holder: ClaimHolder, customer: tuple[str, str] | None) -> tuple[ActionClaim, CardClaim | None]:
        with self._tx() as c:
            claim = _take_action(c, self.dialect.lock_row, holder, SAVE)
            if claim.status != ClaimStatus.ACQUIRED or customer is None:
                return claim, None
            self._serialize(c, f"card\x00{holder.organization}\x00{customer[0]}")
            card = _take_card(c, holder, *customer)
            if card.status == ClaimStatus.BUSY:  # the action goes back, as `release_action` would
                _give_back_action(c, holder, SAVE, uncertain=claim.uncertain, hold_until=None)
            return claim, card

    # --- named leases -------------------------------------------------------------------------
    def take_lease(self, name: str, *, owner: str, seconds: float, now: float) -> bool:
        with self._tx() as c:
            return (
                c.run(
                    "INSERT INTO leases (name, owner, expires_at) VALUES (?,?,?) ON CONFLICT (name) DO UPDATE"
                    " SET owner = excluded.owner, expires_at = excluded.expires_at"
                    " WHERE leases.expires_at <= ? OR leases.owner = excluded.owner",
                    (name, owner, now + seconds, now),
                )
                == 1
            )

    def release_lease(self, name: str, *, owner: str) -> None:
        with self._tx() as c:
            c.run("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))


def _take_action(c: Cursorish, lock_row: str, h: ClaimHolder, action: str) -> ActionClaim:
    inserted = c.run(
        "INSERT INTO order_actions (organization, order_id, action, state, owner, lease_expires_at, uncertain,"
        " job_id, updated_at) VALUES (?,?,?,'in_flight',?,?,0,?,?)"
        " ON CONFLICT (organization, order_id, action) DO NOTHING",
        (h.organization, h.order_id, action, h.worker, h.until, h.job_id, h.now),
    )
    if inserted == 1:
        return ActionClaim(ClaimStatus.ACQUIRED)
    row = c.one(
        "SELECT state, owner, lease_expires_at, uncertain, wallet_entry_id FROM order_actions"  # nosec B608  # constants and ? placeholders only
        " WHERE organization = ? AND order_id = ? AND action = ?" + lock_row,
        (h.organization, h.order_id, action),
    )
    assert row is not None
    if row["state"] == ActionState.DONE:
        return ActionClaim(ClaimStatus.DONE, wallet_entry_id=row["wallet_entry_id"])
    live = (
        row["state"] == ActionState.IN_FLIGHT
        and row["lease_expires_at"] is not None
        and float(row["lease_expires_at"]) > h.now
        and row["owner"] != h.worker
    )
    if live:
        return ActionClaim(ClaimStatus.BUSY)
    # open (an earlier attempt failed cleanly or uncertainly) or in flight by a dead worker
    uncertain = bool(row["uncertain"]) or row["state"] == ActionState.IN_FLIGHT
    c.run(
        "UPDATE order_actions SET state = 'in_flight', owner = ?, lease_expires_at = ?, uncertain = ?,"
        " job_id = ?, updated_at = ? WHERE organization = ? AND order_id = ? AND action = ?",
        (h.worker, h.until, int(uncertain), h.job_id, h.now, h.organization, h.order_id, action),
    )
    return ActionClaim(ClaimStatus.ACQUIRED, uncertain=uncertain)


def _give_back_action(c: Cursorish, h: ClaimHolder, action: str, *, uncertain: bool, hold_until: float | None) -> None:
    released = c.run(
        "UPDATE order_actions SET state = 'open', owner = NULL, lease_expires_at = NULL,"
        " uncertain = ?, updated_at = ? WHERE organization = ? AND order_id = ? AND action = ?"
        " AND state = 'in_flight' AND owner = ?",
        (int(uncertain), h.now, h.organization, h.order_id, action, h.worker),
    )
    if released != 1 or action != SAVE:
        return
    if uncertain:
        # The save may still land: the card stays this order's until its next attempt has
        # looked (or the hold runs out), so no other order saves the card meanwhile.
        c.run(
            "UPDATE card_claims SET owner = NULL, lease_expires_at = COALESCE(?, lease_expires_at),"
            " updated_at = ? WHERE organization = ? AND order_id = ? AND state = 'held' AND owner = ?",
            (hold_until, h.now, h.organization, h.order_id, h.worker),
        )
    else:
        c.run(
            "UPDATE card_claims SET state = 'open', owner = NULL, lease_expires_at = NULL, updated_at = ?"
            " WHERE organization = ? AND order_id = ? AND state = 'held' AND owner = ?",
            (h.now, h.organization, h.order_id, h.worker),
        )


def _take_card(c: Cursorish, h: ClaimHolder, customer_id: str, card_key: str) -> CardClaim:
    if card_key:
        rows = c.all(
            "SELECT card_key, state, order_id, lease_expires_at, wallet_entry_id FROM card_claims"
            " WHERE organization = ? AND customer_id = ? AND card_key IN (?, '')",
            (h.organization, customer_id, card_key),
        )
    else:  # the card is not known: it may be any of the customer's
        rows = c.all(
            "SELECT card_key, state, order_id, lease_expires_at, wallet_entry_id FROM card_claims"
            " WHERE organization = ? AND customer_id = ?",
            (h.organization, customer_id),
        )
    for r in rows:
        if (
            r["state"] == CardState.HELD
            and r["order_id"] != h.order_id
            and r["lease_expires_at"] is not None
            and float(r["lease_expires_at"]) > h.now
        ):
            return CardClaim(ClaimStatus.BUSY, holder=str(r["order_id"]))
    last = next((r["wallet_entry_id"] for r in rows if r["card_key"] == card_key), None)
    c.run(
        "INSERT INTO card_claims (organization, customer_id, card_key, state, order_id, owner, job_id,"
        " lease_expires_at, updated_at) VALUES (?,?,?,'held',?,?,?,?,?)"
        " ON CONFLICT (organization, customer_id, card_key) DO UPDATE SET state = 'held',"
        " order_id = excluded.order_id, owner = excluded.owner, job_id = excluded.job_id,"
        " lease_expires_at = excluded.lease_expires_at, updated_at = excluded.updated_at",
        (h.organization, customer_id, card_key, h.order_id, h.worker, h.job_id, h.until, h.now),
    )
    return CardClaim(ClaimStatus.ACQUIRED, fresh=not rows, wallet_entry_id=last)
