"""`SandboxServer`: the sandbox on 127.0.0.1, in a background thread, for tests and the CLI.

    with SandboxServer(scenario="example") as server:
        requests.post(server.auth_url, json={...})
        requests.get(f"{server.api_url}/orders/ID", headers={...})
        server.sandbox.trigger("orders.place", ["ID"])   # or POST {server.url}/_sandbox/events

A threaded werkzeug server answers each request in its own thread (so hanging requests do not
block others). `port=0` picks a free port; `.url` tells which. A scenario with `organizations` serves several
organizations (`organizations.py`): `.sandboxes` by slug, `.org_url(slug)` for each one's prefix.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from commercelayer_sandbox.api import create_sandbox_app
from commercelayer_sandbox.errors import SandboxError
from commercelayer_sandbox.organizations import PREFIX, OrganizationDispatcher, split_scenario
from commercelayer_sandbox.ratelimit import SlidingWindowLimiter
from commercelayer_sandbox.sandbox import Sandbox
from commercelayer_sandbox.seed import read_scenario

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


class QuietRequestHandler(WSGIRequestHandler):
    """werkzeug's handler without a stderr line per request (the sandbox keeps its own log)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s -> %s", self.command, self.path, code)


class SandboxServer:
    """Runs a `Sandbox` (a new one unless given) on `host:port` until `stop()`.

    `scenario` (a mapping, a file path or `"example"`) is loaded as the initial scenario, the one
    `POST /_sandbox/reset` returns to; `config` settings win over the scenario's `[sandbox]`
    table and survive resets.
    """

    def __init__(
        self,
        sandbox: Sandbox | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        scenario: Mapping[str, Any] | str | Path | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        data = read_scenario(scenario) if isinstance(scenario, str | Path) else scenario
        parts = split_scenario(data) if data is not None else None
        #: Every organization this process serves, by slug (one unless the scenario lists several).
        self.sandboxes: dict[str, Sandbox] = {}
        if parts is None:
            one = sandbox or Sandbox()
            if config:
                one.set_overrides(config)
            if data is not None:
                one.load_scenario(data, initial=True)
            self.sandboxes[one.config.organization_slug] = one
        else:
            if sandbox is not None:
                raise SandboxError("organizations", "a scenario with organizations makes its own sandboxes")
            # Commerce Layer counts rate limits per client address across organizations: one limiter.
            limiter = SlidingWindowLimiter()
            shared = {k: v for k, v in (config or {}).items() if k not in ("organization_slug", "organization_id")}
            for slug, part in parts:
                org = Sandbox(limiter=limiter)
                if shared:
                    org.set_overrides(shared)
                org.load_scenario(part, initial=True)
                self.sandboxes[slug] = org
        #: The first organization: what paths without an organization prefix or host name reach.
        self.sandbox = next(iter(self.sandboxes.values()))
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the sandbox server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`: the root (control API under `/_sandbox/`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        """The API base (`.../api`), what Commerce Layer calls `https://<slug>.commercelayer.io/api`."""
        return f"{self.url}/api"

    def org_url(self, slug: str) -> str:
        """`http://127.0.0.1:PORT/_org/<slug>`: that organization's root (`/api`, `/oauth/token`, `/_sandbox/`)."""
        if slug not in self.sandboxes:
            raise KeyError(slug)
        return f"{self.url}{PREFIX}{slug}"

    @property
    def auth_url(self) -> str:
        """The token endpoint, Commerce Layer's `https://auth.commercelayer.io/oauth/token`."""
        return f"{self.url}/oauth/token"

    def start(self) -> SandboxServer:
        if self._server is not None:
            raise RuntimeError("the sandbox server is already running")
        apps = {slug: create_sandbox_app(sb) for slug, sb in self.sandboxes.items()}
        app = OrganizationDispatcher(apps, self.sandboxes)
        server = make_server(self.host, self._requested_port, app, threaded=True, request_handler=QuietRequestHandler)
        self._server = server
        for sb in self.sandboxes.values():
            sb.start()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("sandbox listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop sending, wake hanging requests, stop serving and close the listening socket."""
        server, thread = self._server, self._thread
        if server is None:
            return
        for sb in self.sandboxes.values():
            sb.stop()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
