"""What-if: which orders would another policy treat differently?

Re-decides recorded deliveries with a new policy (pure: guards included, nothing called) and
compares, order by order, the set of actions that would call Commerce Layer with what was
recorded (or, for deliveries not decided yet, what the current policy decides).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from webhook_app.errors import InvalidPayload
from webhook_app.events import Event
from webhook_app.policy import SKIP, Policy
from webhook_app.states import DeliveryStatus
from webhook_app.store import DeliveryFilter, Store


@dataclass(frozen=True)
class Change:
    order_id: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    rules_before: tuple[str, ...]
    rules_after: tuple[str, ...]

    def line(self) -> str:
        def show(actions: tuple[str, ...], rules: tuple[str, ...]) -> str:
            return f"{'+'.join(actions) or SKIP} ({', '.join(rules) or '-'})"

        return f"{self.order_id}: {show(self.before, self.rules_before)} -> {show(self.after, self.rules_after)}"


def order_deliveries(
    store: Store, flt: DeliveryFilter, removed: list[str] | None = None
) -> Iterator[tuple[str, str, bytes, list[dict[str, Any]]]]:
    """(order_id, topic, body, decisions) for every recorded order delivery matching `flt`;
    the order id of each whose body is gone (forgotten, past retention) goes to `removed`."""
    for d in store.iter_deliveries(replace(flt, with_body=True)):
        if d.order_id and d.status == DeliveryStatus.QUEUED:
            if d.body_removed is None:
                yield d.order_id, d.topic, d.body, d.decisions
            elif removed is not None:
                removed.append(d.order_id)


def diff(
    store: Store,
    new: Policy,
    current: Policy,
    flt: DeliveryFilter | None = None,
    *,
    skipped: list[str] | None = None,
) -> list[Change]:
    """The orders `new` would decide differently; a delivery whose body is gone cannot be decided
    again: its order id goes to `skipped` (it is no evidence of "no difference")."""
    before_actions: dict[str, set[str]] = defaultdict(set)
    after_actions: dict[str, set[str]] = defaultdict(set)
    before_rules: dict[str, set[str]] = defaultdict(set)
    after_rules: dict[str, set[str]] = defaultdict(set)
    orders: list[str] = []
    for order_id, topic, body, decisions in order_deliveries(store, flt or DeliveryFilter(limit=10**9), skipped):
        if order_id not in before_actions:
            orders.append(order_id)
            before_actions[order_id]
        try:
            event = Event.from_body(topic, body)
        except InvalidPayload:
            continue
        if decisions:
            last = decisions[-1]
            was_action, was_rule = (last["action"], last["rule"]) if not last.get("guard") else (SKIP, last["rule"])
            if last.get("guard") == "already_flagged":
                was_action = SKIP  # the action happened through another delivery of the order
        else:
            d = current.decide(event)
            was_action, was_rule = d.action, d.rule
        if was_action != SKIP:
            before_actions[order_id].add(was_action)
            before_rules[order_id].add(was_rule)
        nd = new.decide(event)
        if nd.action != SKIP:
            after_actions[order_id].add(nd.action)
            after_rules[order_id].add(nd.rule)
    out = []
    for order_id in orders:
        if before_actions[order_id] != after_actions[order_id]:
            out.append(
                Change(
                    order_id,
                    tuple(sorted(before_actions[order_id])),
                    tuple(sorted(after_actions[order_id])),
                    tuple(sorted(before_rules[order_id])),
                    tuple(sorted(after_rules[order_id])),
                )
            )
    return out
