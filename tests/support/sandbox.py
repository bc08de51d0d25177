"""Helpers for the sandbox tests: an API client, a recording webhook receiver, a server factory.

Plain helpers (not fixtures) so that each test module declares the fixtures it needs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from commercelayer_sandbox import SandboxServer
from commercelayer_sandbox.seed import read_scenario
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

API = "application/vnd.api+json"
CLIENT_ID = "sandbox-client-id"
CLIENT_SECRET = "sandbox-client-secret"
FAST = {
    "check_responses": True,
    "sender": {"backoff_base": 0.001, "backoff_factor": 1.0, "timeout": 2.0},
}


def example() -> dict[str, Any]:
    return read_scenario("example")


@contextmanager
def running(scenario: dict[str, Any] | str | None = "example", **config: Any) -> Iterator[SandboxServer]:
    """A started SandboxServer with fast test settings (overridable)."""
    data = example() if scenario == "example" else scenario
    merged = {**FAST, **config}
    with SandboxServer(scenario=data, config=merged) as server:
        yield server


class Api:
    """A Commerce Layer API client for tests (one requests.Session, closed on `close()`)."""

    def __init__(self, server: SandboxServer) -> None:
        self.server = server
        self.session = requests.Session()
        self.session.trust_env = False
        self.token: str | None = None

    def close(self) -> None:
        self.session.close()

    def get_token(self, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> str:
        r = self.session.post(
            self.server.auth_url,
            json={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
            },
        )
        assert r.status_code == 200, r.text
        self.token = r.json()["access_token"]
        return self.token

    def headers(self, **extra: str) -> dict[str, str]:
        h = {"Accept": API, "Content-Type": API}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(extra)
        return h

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.server.api_url + path, headers=kw.pop("headers", self.headers()), **kw)

    def patch(self, path: str, body: Any, **kw: Any) -> requests.Response:
        return self.session.patch(
            self.server.api_url + path,
            data=json.dumps(body),
            headers=kw.pop("headers", self.headers()),
            **kw,
        )

    def post(self, path: str, body: Any, **kw: Any) -> requests.Response:
        return self.session.post(
            self.server.api_url + path,
            data=json.dumps(body),
            headers=kw.pop("headers", self.headers()),
            **kw,
        )

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.session.delete(self.server.api_url + path, headers=kw.pop("headers", self.headers()), **kw)

    def control(self, method: str, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.session.request(method, f"{self.server.url}/_sandbox{path}", json=body, **kw)

    def patch_order(self, order_id: str, attributes: dict[str, Any], include: str | None = None) -> requests.Response:
        q = f"?include={include}" if include else ""
        return self.patch(
            f"/orders/{order_id}{q}",
            {"data": {"type": "orders", "id": order_id, "attributes": attributes}},
        )


@dataclass
class Call:
    headers: dict[str, str]
    body: bytes
    at: float
    remote_addr: str = ""


@dataclass
class Receiver:
    """A local webhook endpoint recording every call; `answer(call)` -> (status, delay seconds)."""

    answer: Callable[[Call], tuple[int, float]] = lambda call: (204, 0.0)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args: Any) -> None:
                pass

        self._server = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        req = Request(environ)
        call = Call(dict(req.headers), req.get_data(), time.monotonic(), req.remote_addr or "")
        with self._changed:
            self.calls.append(call)
            self._changed.notify_all()
        status, delay = self.answer(call)
        if delay:
            time.sleep(delay)
        return Response(b"", status)(environ, start_response)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Call]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.calls) >= count, timeout), (
                f"expected {count} calls, got {len(self.calls)}"
            )
            return list(self.calls)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def signature(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def webhook_scenario(
    callback_url: str,
    *,
    include: list[str] | None = None,
    secret: str = "s3cret",
    topic: str = "orders.place",
    **hook: Any,
) -> dict[str, Any]:
    """The example scenario with its webhook pointed at a test receiver."""
    data = example()
    data["webhooks"] = [
        {
            "id": "HookTestAa",
            "topic": topic,
            "callback_url": callback_url,
            "include_resources": include if include is not None else ["customer", "payment_source"],
            "shared_secret": secret,
            **hook,
        }
    ]
    return data
