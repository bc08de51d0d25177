"""`GET /metrics`: the Prometheus text format of `webhook_app.metrics` (this process's counters,
or every process's in multiprocess mode, and the gauges read from the database at scrape time)."""

from __future__ import annotations

from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook_app.metrics import StoreCollector, scrape_registry
from webhook_app.web.context import services


def init_app(app: Flask) -> None:
    """Add `GET /metrics` (Prometheus text format)."""

    def metrics() -> Response:
        s = services()
        registry = scrape_registry(StoreCollector(s.store, s.clock, s.policy, enforce=not s.settings.shadow))
        # CONTENT_TYPE_LATEST already names its charset: as the whole header, not as a mimetype
        # (to which Flask would add a second one).
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
