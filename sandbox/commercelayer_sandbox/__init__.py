"""The sandbox: a faithful local double of Commerce Layer, for tests, benchmarks and trials.

It plays both sides the receiver talks to: the API (OAuth tokens, orders with the wallet
triggers, wallets, webhooks; JSON:API bodies checked against the official schema; rate limits
and injectable faults) and the webhook sender (signed compact bodies, retries, circuit breaker,
event callbacks). A control API under `/_sandbox/` loads scenarios, triggers events and reports
what happened. Modules:

    state, model      the in-memory organization     render   JSON:API documents
    orders, webhooks  what PATCH/POST bodies do      bodies   request bodies vs the schema
    seed              scenario files and generation  schema   the official schema fragments
    ratelimit, faults what can slow or break a call  sender   webhook delivery
    sandbox           ties them together             api, control  the HTTP layer (Flask)
    tokens            JWT access tokens              cli      `commercelayer-sandbox`
    server            SandboxServer (a thread)     organizations  several organizations, one process
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from commercelayer_sandbox.api import create_sandbox_app
    from commercelayer_sandbox.config import SandboxConfig, SenderConfig
    from commercelayer_sandbox.sandbox import Sandbox
    from commercelayer_sandbox.server import SandboxServer

__all__ = ["Sandbox", "SandboxConfig", "SandboxServer", "SenderConfig", "create_sandbox_app"]

# Imported when first used, so that importing a light module (`cli`, to register the subcommand
# in `webhook-app --help`) does not load the Flask app.
_WHERE = {
    "Sandbox": "commercelayer_sandbox.sandbox",
    "SandboxConfig": "commercelayer_sandbox.config",
    "SandboxServer": "commercelayer_sandbox.server",
    "SenderConfig": "commercelayer_sandbox.config",
    "create_sandbox_app": "commercelayer_sandbox.api",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
