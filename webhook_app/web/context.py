"""The services one web process uses, built once by `create_app`: a leaf every route module imports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import current_app

from webhook_app.config import Settings
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
    recorder: CommitClient  # the intake stores through it: the host's commit writer, or `store`


def services() -> Services:
    found: Services = current_app.extensions[EXTENSION]
    return found
