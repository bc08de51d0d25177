"""Wallet hygiene: find customers with several wallet entries for one card, and delete the extras.

Wallets fill with copies when the same card is saved twice (Commerce Layer's own checkout once did
it, https://github.com/commercelayer/mfe-checkout/issues/409) or typed again by a returning
customer before this service matched cards. `find_duplicates` reads the wallet entries (paginated,
through the client's rate limit) with each entry's `customer` and `payment_source`, and groups one
customer's entries that are the same card by the policy's `wallet_match` keys, as the guards do:
entries made from one payment source record, the same gateway token, the same Stripe card
fingerprint, and (only if the policy names it) the same `payment_instrument` brand, last digits
and expiry. `delete_entries` keeps the oldest entry of each group and deletes the others, recording
each deletion in the operations log (`wallet_entry_deleted`).

Expired cards: a wallet entry carries no expiry, its payment source does (`policy.expiry`).
`find_expired` reads the entries with their payment sources and lists those whose card has
expired, will within a window, or cannot be told; `delete_entries` deletes only the expired ones
(`wallet_entry_deleted`, `why: card_expired`), and each scan is logged (`wallet_expired_scan`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from webhook_app.commercelayer import CommerceLayerAPI
from webhook_app.errors import CommerceLayerError
from webhook_app.events import Resource
from webhook_app.policy import expiry as expiry_mod
from webhook_app.policy import wallet
from webhook_app.store import Store

OPERATION = "wallet_entry_deleted"
INCLUDES = ("customer", "payment_source")
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Entry:
    id: str
    customer_id: str
    created_at: str
    source: str | None  # "type/id" of the payment source it was made from
    name: str
    keys: frozenset[tuple[str, ...]] = field(repr=False, default=frozenset())

    def at(self) -> float | None:
        try:
            return datetime.fromisoformat(self.created_at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None


@dataclass(frozen=True)
class Group:
    """One customer's entries for one card, oldest first: the first is kept."""

    customer_id: str
    entries: tuple[Entry, ...]
    how: str

    @property
    def keep(self) -> Entry:
        return self.entries[0]

    @property
    def extra(self) -> tuple[Entry, ...]:
        return self.entries[1:]


@dataclass
class Report:
    scanned: int = 0
    customers: int = 0
    groups: list[Group] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def extra(self) -> int:
        return sum(len(g.extra) for g in self.groups)

    def doomed(self) -> list[tuple[str, dict[str, Any]]]:
        """What `delete_entries` removes: every group's entries but the oldest, each with the
        detail its deletion is recorded with."""
        return [(entry.id, _detail(group, entry)) for group in self.groups for entry in group.extra]


def card_keys(entry: Resource, source: Resource | None, keys: Sequence[str]) -> dict[tuple[str, ...], str]:
    """What makes two entries the same card, each key with the name of the way it matched."""
    out: dict[tuple[str, ...], str] = {}
    ref = wallet.entry_source_ref(entry)
    if ref is not None:
        out[("record", *ref)] = "payment source record"
    ptype = ref[0] if ref else (source.type if source else "")
    if wallet.GATEWAY_TOKEN in keys:
        tokens = set(wallet.source_tokens(source))
        token = wallet.entry_token(entry)
        if token:
            tokens.add(token)
        for t in tokens:
            out[("token", ptype, t)] = wallet.GATEWAY_TOKEN
    fingerprint = wallet.card_fingerprint(source)
    if wallet.CARD_FINGERPRINT in keys and fingerprint:
        # The fingerprint names the card number: a renewed card (same number, new expiry) is
        # another entry to keep (policy/wallet.py, `entry_matches`).
        x = expiry_mod.card_expiry(source)
        out[("fingerprint", ptype, fingerprint, str(x) if x else "")] = wallet.CARD_FINGERPRINT
    details = wallet.card_details(source)
    # A fingerprint, where there is one, decides: same brand, last 4 and expiry can be another card.
    if wallet.PAYMENT_INSTRUMENT in keys and details and not fingerprint:
        out[("card", ptype, *details)] = wallet.PAYMENT_INSTRUMENT
    return out


def read_entries(
    client: CommerceLayerAPI,
    *,
    keys: Sequence[str],
    customer_id: str | None = None,
    progress: Progress | None = None,
) -> list[tuple[Entry, dict[tuple[str, ...], str]]]:
    """Every wallet entry (or one customer's) with its card keys."""
    out = []
    for r, owner, index in _wallet_entries(client, customer_id=customer_id, include=INCLUDES, progress=progress):
        ref = wallet.entry_source_ref(r)
        source = index.get(ref) if ref else None
        entry = Entry(
            id=r.id,
            customer_id=owner,
            created_at=str(r.attributes.get("created_at") or ""),
            source="/".join(ref) if ref else None,
            name=str(r.attributes.get("name") or ""),
        )
        out.append((entry, card_keys(r, source, keys)))
    return out


def _wallet_entries(
    client: CommerceLayerAPI, *, customer_id: str | None, include: Sequence[str], progress: Progress | None
) -> Iterator[tuple[Resource, str, dict[tuple[str, str], Resource]]]:
    """Each wallet entry (or one customer's) with its owner and its page's included resources, page
    after page through the client's rate limit, `progress` told after each page. An entry with no
    customer linkage is passed over: whose wallet it is cannot be told."""
    for n, doc in enumerate(client.list_wallet_pages(customer_id=customer_id, include=include), start=1):
        index: dict[tuple[str, str], Resource] = {}
        for item in doc.get("included") or []:
            r = Resource.from_json(item)
            index[(r.type, r.id)] = r
        for item in doc.get("data") or []:
            r = Resource.from_json(item)
            customer = r.linkage("customer")
            owner = str(customer["id"]) if isinstance(customer, dict) and customer.get("id") else customer_id
            if owner is not None:
                yield r, owner, index
        if progress is not None:
            pages = int((doc.get("meta") or {}).get("page_count") or n)
            progress("pages", n, max(pages, n))


def group_duplicates(entries: Iterable[tuple[Entry, dict[tuple[str, ...], str]]]) -> list[Group]:
    """One customer's entries sharing any card key, joined (union-find), oldest first."""
    items = list(entries)
    parent = list(range(len(items)))
    how: dict[int, set[str]] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[tuple[str, ...], int] = {}
    for i, (entry, keys) in enumerate(items):
        for key, name in keys.items():
            scoped = (entry.customer_id, *key)
            if scoped in first_with:
                a, b = root(first_with[scoped]), root(i)
                if a != b:
                    parent[b] = a
                how.setdefault(i, set()).add(name)
            else:
                first_with[scoped] = i
    members: dict[int, list[int]] = {}
    for i in range(len(items)):
        members.setdefault(root(i), []).append(i)
    groups = []
    for idx in members.values():
        if len(idx) < 2:
            continue
        entries_ = sorted((items[i][0] for i in idx), key=lambda e: (e.created_at, e.id))
        names = sorted(set().union(*(how.get(i, set()) for i in idx)))
        groups.append(Group(entries_[0].customer_id, tuple(entries_), ", ".join(names)))
    return sorted(groups, key=lambda g: (g.customer_id, g.keep.created_at, g.keep.id))


def find_duplicates(
    client: CommerceLayerAPI,
    *,
    keys: Sequence[str] = wallet.DEFAULT_MATCH,
    customer_id: str | None = None,
    since: float | None = None,
    progress: Progress | None = None,
) -> Report:
    """Customers with more than one entry for one card; with `since`, groups with an entry made since."""
    entries = read_entries(client, keys=keys, customer_id=customer_id, progress=progress)
    groups = group_duplicates(entries)
    if since is not None:
        groups = [g for g in groups if any((e.at() or 0) >= since for e in g.entries)]
    return Report(scanned=len(entries), customers=len({e.customer_id for e, _ in entries}), groups=groups)


def delete_entries(
    client: CommerceLayerAPI,
    store: Store,
    report: Report | ExpiryReport,
    *,
    clock: Callable[[], float],
    progress: Progress | None = None,
    organization: str = "",
) -> None:
    """Delete the report's doomed entries (`Report`: the duplicates but the oldest of each card;
    `ExpiryReport`: the expired cards), each recorded as `wallet_entry_deleted` and added to
    `report.deleted`; one already gone (404) is passed over. Stops at the first error
    (CommerceLayerError propagates); what was deleted before it is recorded and in `report`."""
    doomed = report.doomed()
    deleted = report.deleted
    for entry_id, detail in doomed:
        try:
            client.delete_wallet_entry(entry_id)
        except CommerceLayerError as exc:
            if exc.answer_status != 404:
                raise
            continue  # already gone: nothing deleted by us, nothing recorded
        store.record_operation(OPERATION, subject=entry_id, detail=detail, now=clock(), organization=organization)
        deleted.append(entry_id)
        if progress is not None:
            progress("deleted", len(deleted), len(doomed))


def _detail(group: Group, entry: Entry) -> dict[str, Any]:
    return {
        "why": "duplicate",
        "customer_id": group.customer_id,
        "kept": group.keep.id,
        "matched_by": group.how,
        "payment_source": entry.source,
        "name": entry.name,
        "created_at": entry.created_at,
    }


# --- expired cards ----------------------------------------------------------------------------

EXPIRED_INCLUDES = ("customer", "payment_source", "payment_method.market")
SCAN_OPERATION = "wallet_expired_scan"
EXPIRED = "expired"
EXPIRING = "expiring"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class CardEntry:
    """A wallet entry with what its payment source says of the card's expiry."""

    id: str
    customer_id: str
    name: str
    created_at: str
    source: str | None  # "type/id" of the payment source it was made from
    expiry: expiry_mod.Expiry | None
    market_id: str | None  # through the entry's payment method, where Commerce Layer says
    state: str  # expired | expiring | unknown | valid


@dataclass
class ExpiryReport:
    """`wallet expired`: the entries whose card has expired, will within the window, or cannot be
    told (valid ones are only counted)."""

    scanned: int = 0
    customers: int = 0
    at: str = ""
    within_days: int = 0
    entries: list[CardEntry] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def having(self, state: str) -> list[CardEntry]:
        return [e for e in self.entries if e.state == state]

    def by_market(self, state: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.having(state):
            key = e.market_id or UNKNOWN
            out[key] = out.get(key, 0) + 1
        return out

    def doomed(self) -> list[tuple[str, dict[str, Any]]]:
        """What `delete_entries` removes: the entries whose card has expired (never the expiring or
        unknown ones), each with the detail its deletion is recorded with (`why: card_expired`)."""
        return [
            (
                entry.id,
                {
                    "why": "card_expired",
                    "customer_id": entry.customer_id,
                    "card_expiry": str(entry.expiry),
                    "market_id": entry.market_id,
                    "payment_source": entry.source,
                    "name": entry.name,
                    "created_at": entry.created_at,
                },
            )
            for entry in self.having(EXPIRED)
        ]


def card_state(x: expiry_mod.Expiry | None, *, now: datetime, horizon: datetime) -> str:
    if x is None:
        return UNKNOWN
    if x.expired_at(now):
        return EXPIRED
    return EXPIRING if x.expired_at(horizon) else "valid"


def find_expired(
    client: CommerceLayerAPI,
    *,
    now: float,
    within_days: int = 0,
    customer_id: str | None = None,
    progress: Progress | None = None,
) -> ExpiryReport:
    """Every wallet entry (or one customer's), paginated through the client's rate limit, judged
    by its payment source's card expiry at `now` (and `within_days` later)."""
    at = datetime.fromtimestamp(now, UTC)
    horizon = at + timedelta(days=within_days)
    report = ExpiryReport(at=at.isoformat(timespec="seconds").replace("+00:00", "Z"), within_days=within_days)
    owners: set[str] = set()
    for r, owner, index in _wallet_entries(
        client, customer_id=customer_id, include=EXPIRED_INCLUDES, progress=progress
    ):
        report.scanned += 1
        owners.add(owner)
        ref = wallet.entry_source_ref(r)
        x = expiry_mod.entry_expiry(r, index)
        state = card_state(x, now=at, horizon=horizon)
        if state == "valid":
            continue
        report.entries.append(
            CardEntry(
                id=r.id,
                customer_id=owner,
                name=str(r.attributes.get("name") or ""),
                created_at=str(r.attributes.get("created_at") or ""),
                source="/".join(ref) if ref else None,
                expiry=x,
                market_id=_entry_market(r, index),
                state=state,
            )
        )
    report.customers = len(owners)
    report.entries.sort(key=lambda e: (e.customer_id, e.created_at, e.id))
    return report


def _entry_market(entry: Resource, index: dict[tuple[str, str], Resource]) -> str | None:
    """The market of the entry's payment method (linkage only where `payment_method.market` was
    included)."""
    link = entry.linkage("payment_method")
    if not isinstance(link, dict) or not link.get("id"):
        return None
    method = index.get(("payment_methods", str(link["id"])))
    market = method.linkage("market") if method is not None else None
    return str(market["id"]) if isinstance(market, dict) and market.get("id") else None


def record_scan(
    store: Store, report: ExpiryReport, *, customer_id: str | None, now: float, organization: str = ""
) -> None:
    """One operations-log line per scan: how many entries were expired (per market), expiring,
    unknown (the admin page's "expired found")."""
    store.record_operation(
        SCAN_OPERATION,
        subject=customer_id,
        detail={
            "scanned": report.scanned,
            "customers": report.customers,
            "within_days": report.within_days,
            EXPIRED: len(report.having(EXPIRED)),
            EXPIRING: len(report.having(EXPIRING)),
            UNKNOWN: len(report.having(UNKNOWN)),
            "expired_by_market": report.by_market(EXPIRED),
        },
        now=now,
        organization=organization,
    )
