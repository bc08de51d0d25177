"""Errors become HTTP answers here, for Flask's routes (`web/__init__.py`) and the WSGI intake
(`web/intake.py`) alike: the status the exception carries, the JSON body `{"errors": [...]}`,
`Retry-After` when the store could not take the request (a client should come back), and one
`request refused` log line (a warning when the store failed, else info: a refusal is the client's
mistake, not ours). Flask-free, so the intake answers without building a Flask response.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from webhook_app.errors import StoreError, WebhookAppError
from webhook_app.web.context import error_body

log = logging.getLogger(__name__)

# Seconds a client is asked to wait after the store could not take its request.
RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class Refusal:
    """One error's answer: status, JSON body and the headers to add."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


def refusal(exc: WebhookAppError, *, request_id: str | None, path: str, **log_fields: Any) -> Refusal:
    """Log the refusal of a request with `exc` and build its answer."""
    log.log(
        logging.WARNING if isinstance(exc, StoreError) else logging.INFO,
        "request refused",
        extra={
            "status": exc.status,
            "error": type(exc).__name__,
            "detail": exc.detail,
            "request_id": request_id,
            "path": path,
            **log_fields,
        },
    )
    headers = (("Retry-After", str(RETRY_AFTER_SECONDS)),) if isinstance(exc, StoreError) else ()
    return Refusal(exc.status, error_body(exc.status, exc.title, exc.detail), headers)
