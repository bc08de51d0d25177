"""`GET /metrics`: the Prometheus text format of `webhook_app.metrics` (this process's counters,
or every process's in multiprocess mode, and the gauges read from the database at scrape time)."""

from __future__ import annotations

from flask import Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook_app.metrics import StoreCollector, scrape_registry
from webhook_app.web.context import services

_EXTENSION = "webhook_app.metrics"


def init_app(app: Flask) -> None:
    """Add `GET /metrics` (Prometheus text format)."""

    def metrics() -> Response:
        registry = scrape_registry(_store_collector())
        # CONTENT_TYPE_LATEST already names its charset: as the whole header, not as a mimetype
        # (to which Flask would add a second one).
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])


def _store_collector() -> StoreCollector:
    """This app's one StoreCollector: kept, so that an expensive read of the database is shared by
    the scrapes that follow it (StoreCollector.HOLD_*) instead of made again for each."""
    found = current_app.extensions.get(_EXTENSION)
    if found is None:
        s = services()
        found = current_app.extensions[_EXTENSION] = StoreCollector(
            s.store, s.clock, s.policy, enforce=not s.settings.shadow
        )
    return found
