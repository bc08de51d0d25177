"""Retention: what is pruned, when, in small batches that never hold up the intake for long.

Bodies and headers (the personal data: names, emails, addresses) are removed
`retain_bodies_days` after receipt, once their job is done or dead; the deliveries themselves,
with their jobs, attempts and decisions, `retain_records_days` after receipt. Per-order action
claims are never pruned, so an order flagged a year ago is still known as flagged. The worker
calls `prune` every `prune_interval` seconds; `webhook-app db prune` calls it by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from webhook_app.config import Settings
from webhook_app.store.base import Store

log = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(frozen=True)
class PruneReport:
    bodies: int
    deliveries: int
    batches: int
    complete: bool  # False when `max_batches` stopped it with more to do


def prune(
    store: Store, settings: Settings, *, now: float, dry_run: bool = False, max_batches: int = 1000
) -> PruneReport:
    """Prune in batches of `settings.prune_batch`, each its own short transaction."""
    bodies = deliveries = batches = 0
    bodies_before = now - settings.retain_bodies_days * DAY
    records_before = now - settings.retain_records_days * DAY
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
