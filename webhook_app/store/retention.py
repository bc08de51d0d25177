"""Retention: what is pruned, when, in small batches that never hold up the intake for long.

Bodies and headers (the personal data: names, emails, addresses) are removed
`retain_bodies_days` after receipt, once their job is done or dead; the deliveries themselves,
with their jobs, attempts and decisions, `retain_records_days` after receipt. Per-order action
claims are never pruned, so an order flagged a year ago is still known as flagged. The worker
calls `prune` every `prune_interval` seconds; `webhook-app db prune` calls it by hand.

Optionally (`WEBHOOK_APP_REDACT_FIELDS`), the values of the named attributes (anywhere under the
resource's and the included resources' `attributes`) are replaced by `"[redacted]"`
`redact_after_days` after receipt, once the delivery is settled: the rest of the body stays for
the admin views and `policy diff` until the body's own retention ends. A replay after that sends
the redacted body (a new identity, so the target stores it as a new delivery).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from webhook_app.config import Settings
from webhook_app.store.ports import Retention, Store

log = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(frozen=True)
class PruneReport:
    bodies: int
    deliveries: int
    batches: int
    complete: bool  # False when `max_batches` stopped it with more to do


def prune(
    store: Retention, settings: Settings, *, now: float, dry_run: bool = False, max_batches: int = 1000
) -> PruneReport:
    """Prune in batches of `settings.prune_batch`, each its own short transaction."""
    bodies = deliveries = batches = 0
    bodies_before = now - settings.retain_bodies_days * DAY
    records_before = now - settings.retain_records_days * DAY
    if settings.redact_fields and not dry_run:
        redact(store, settings, now=now, max_batches=max_batches)
    while batches < max_batches:
        done = store.prune(
            bodies_before=bodies_before,
            records_before=records_before,
            limit=settings.prune_batch,
            now=now,
            dry_run=dry_run,
        )
        batches += 1
        bodies += done.bodies
        deliveries += done.deliveries
        if dry_run or (done.bodies < settings.prune_batch and done.deliveries < settings.prune_batch):
            if not dry_run and (bodies or deliveries):
                store.reclaim()  # once the backlog is worked off, not after every batch
            return PruneReport(bodies, deliveries, batches, True)
    return PruneReport(bodies, deliveries, batches, False)


REDACTED = "[redacted]"


def redact_document(doc: Any, fields: Collection[str]) -> Any:
    """`doc` with the values of `fields` replaced wherever they appear under an `attributes`."""

    def walk(value: Any, inside_attributes: bool) -> Any:
        if isinstance(value, dict):
            return {
                k: REDACTED
                if inside_attributes and k in fields and v is not None
                else walk(v, inside_attributes or k == "attributes")
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [walk(v, inside_attributes) for v in value]
        return value

    return walk(doc, False)


def redact(store: Retention, settings: Settings, *, now: float, max_batches: int = 1000) -> int:
    """Redact the configured fields of settled bodies past `redact_after_days`; how many."""
    done = 0
    fields = frozenset(settings.redact_fields)
    for _ in range(max_batches):
        rows = store.bodies_to_redact(before=now - settings.redact_after_days * DAY, limit=settings.prune_batch)
        if not rows:
            break
        out = []
        for delivery_id, body in rows:
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                out.append((delivery_id, body))  # not JSON (cannot happen after intake): marked, kept
                continue
            out.append((delivery_id, json.dumps(redact_document(doc, fields), separators=(",", ":")).encode()))
        done += store.replace_bodies(out, now=now)
        if len(rows) < settings.prune_batch:
            break
    return done


def prune_and_record(store: Store, settings: Settings, *, now: float, by: str, max_batches: int = 1000) -> PruneReport:
    """`prune`, then an entry in the operations log when anything was removed."""
    report = prune(store, settings, now=now, max_batches=max_batches)
    if report.bodies or report.deliveries:
        store.record_operation(
            "prune",
            subject=None,
            detail={
                "bodies_removed": report.bodies,
                "deliveries_removed": report.deliveries,
                "retain_bodies_days": settings.retain_bodies_days,
                "retain_records_days": settings.retain_records_days,
                "by": by,
                "complete": report.complete,
            },
            now=now,
        )
        log.info(
            "pruned",
            extra={"bodies": report.bodies, "deliveries": report.deliveries, "batches": report.batches, "by": by},
        )
    return report
