"""The services one web process uses, built once by `create_app`: a leaf every route module imports."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app

from webhook_app.config import Settings
from webhook_app.organizations import Organizations
from webhook_app.policy import Policy
from webhook_app.store import Store
from webhook_app.store.group_commit import CommitClient

EXTENSION = "webhook_app"


@dataclass
class Services:
    """What the routes use, built once per process by `create_app`."""

    settings: Settings
    store: Store
    policy: Policy
    clock: Callable[[], float]
    recorder: CommitClient  # the intake stores through it: its `web`'s commit writer, or `store`
    # Agency mode: the organizations served (built from the settings when not given)
    organizations: Organizations | None = None


def request_id_from(given: str) -> str:
    """A proxy's `X-Request-Id` is kept if it is plain ASCII letters, digits and dashes (as
    nginx's $request_id); otherwise the request gets an id of its own."""
    if 0 < len(given) <= 64 and given.isascii() and given.replace("-", "").isalnum():
        return given
    return uuid.uuid4().hex


def error_body(status: int, title: str, detail: str) -> dict[str, Any]:
    """The JSON:API-style error document every refusal answers with."""
    return {"errors": [{"status": str(status), "title": title, "detail": detail}]}


def services() -> Services:
    found: Services = current_app.extensions[EXTENSION]
    return found
