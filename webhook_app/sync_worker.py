"""`web`'s gunicorn worker class: gunicorn's sync worker, with its parser's refusals answered as JSON.

`web` runs gunicorn's own sync worker (one request per process at a time, nginx in front); what
gunicorn's parser refuses before the app sees the request (400, 414, 431) was gunicorn's HTML
page, whose message quotes the request. This class answers those as `serve`'s worker does
(`front_worker.JsonRefusals`): `{"errors": [...]}` with a fixed detail, counted on /metrics.
Everything else is gunicorn's `SyncWorker`.
"""

from __future__ import annotations

from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

from webhook_app.front_worker import JsonRefusals


class SyncWorker(JsonRefusals, GunicornSyncWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's sync worker, refusing in JSON."""
