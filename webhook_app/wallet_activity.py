"""Wallet activity per UTC day and market, from the stored decisions and the operations log.

Shown by the admin API (`GET /admin/wallet-activity?days=N`) and page; `/metrics` has the same
numbers summed over days and markets (`totals`), with only `activity` and `reason` as labels.
The market is the order's (stored beside each decision from the webhook body's `market`
linkage); for expired entries, the market of the entry's payment method. `null` where unknown.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from webhook_app.policy import Policy
from webhook_app.policy.activity import (
    EXPIRED_FOUND,
    EXPIRED_REMOVED,
    REUSE_REFUSED,
    REUSED,
    SAVE_REFUSED,
    SAVED,
    classify,
    rule_actions,
)
from webhook_app.store import Operation, Store

DAY = 86400
SCAN = "wallet_expired_scan"
DELETED = "wallet_entry_deleted"
MAX_DAYS = 366


def _day(t: float) -> int:
    return int(t // DAY)


def _iso_day(day: int) -> str:
    return datetime.fromtimestamp(day * DAY, UTC).date().isoformat()


def _empty() -> dict[str, Any]:
    return {SAVED: 0, REUSED: 0, SAVE_REFUSED: {}, REUSE_REFUSED: {}, EXPIRED_FOUND: 0, EXPIRED_REMOVED: 0}


def _add(cell: dict[str, Any], activity: str, reason: str, n: int) -> None:
    if activity in (SAVE_REFUSED, REUSE_REFUSED):
        cell[activity][reason] = cell[activity].get(reason, 0) + n
    else:
        cell[activity] += n


def _expired(
    scans: Iterable[Operation], deletions: Iterable[Operation]
) -> dict[tuple[int, str | None], dict[str, int]]:
    """Per (day, market): the most expired entries any scan that day found, and those removed."""
    out: dict[tuple[int, str | None], dict[str, int]] = defaultdict(lambda: {EXPIRED_FOUND: 0, EXPIRED_REMOVED: 0})
    for op in scans:
        by_market = op.detail.get("expired_by_market")
        for market, n in by_market.items() if isinstance(by_market, dict) else ():
            key = (_day(op.at), None if market == "unknown" else str(market))
            if isinstance(n, int):
                out[key][EXPIRED_FOUND] = max(out[key][EXPIRED_FOUND], n)
    for op in deletions:
        if op.detail.get("why") != "card_expired":
            continue
        market = op.detail.get("market_id")
        out[(_day(op.at), str(market) if market else None)][EXPIRED_REMOVED] += 1
    return out


def activity_document(store: Store, policy: Policy | None, *, now: float, days: int) -> dict[str, Any]:
    """`{"days", "since", "rows": [{day, market_id, saved, reused, save_refused: {reason: n},
    reuse_refused: {...}, expired_found, expired_removed}], "totals": {...}}`, newest day first."""
    since = (_day(now) - days + 1) * DAY
    actions = rule_actions(policy)
    cells: dict[tuple[int, str | None], dict[str, Any]] = defaultdict(_empty)
    for r in store.wallet_activity(since=since):
        found = classify(r.rule, r.action, r.outcome, r.guard, actions)
        if found is not None:
            _add(cells[(r.day, r.market_id)], found[0], found[1], r.count)
    scans = store.operations_since([SCAN], since=since)
    deletions = store.operations_since([DELETED], since=since)
    for key, counts in _expired(scans, deletions).items():
        for activity, n in counts.items():
            _add(cells[key], activity, "", n)
    rows = []
    totals = _empty()
    for (day, market), cell in sorted(cells.items(), key=lambda kv: (-kv[0][0], kv[0][1] or "")):
        rows.append({"day": _iso_day(day), "market_id": market, **cell})
        for activity in (SAVED, REUSED, EXPIRED_FOUND, EXPIRED_REMOVED):
            totals[activity] += cell[activity]
        for activity in (SAVE_REFUSED, REUSE_REFUSED):
            for reason, n in cell[activity].items():
                _add(totals, activity, reason, n)
    return {"days": days, "since": _iso_day(_day(since)), "rows": rows, "totals": totals}


def metric_counts(store: Store, policy: Policy | None) -> dict[tuple[str, str], int]:
    """All stored wallet activity as (activity, reason) -> count, for `/metrics` (bounded labels:
    the activity, and a guard or outcome name as the reason). Expired entries found are a gauge
    of the last scan, not counted here."""
    actions = rule_actions(policy)
    out: dict[tuple[str, str], int] = defaultdict(int)
    for r in store.wallet_activity(since=0.0):
        found = classify(r.rule, r.action, r.outcome, r.guard, actions)
        if found is not None:
            out[found] += r.count
    removed = sum(1 for op in store.operations_since([DELETED], since=0.0) if op.detail.get("why") == "card_expired")
    out[(EXPIRED_REMOVED, "card_expired")] += removed
    return dict(out)


def last_full_scan(store: Store) -> Operation | None:
    """The newest `wallet expired` scan of every wallet (not one customer's)."""
    for op in store.list_operations(kind=SCAN, limit=50):
        if op.subject is None:
            return op
    return None
