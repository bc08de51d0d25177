"""The circuit guard (`webhook_app.ops.circuit`) against the sandbox over HTTP, with the real client."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from support import base_env
from support.procs import free_port
from support.sandbox import CLIENT_ID, CLIENT_SECRET, Api, Receiver, running, webhook_scenario

from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.config import Settings
from webhook_app.errors import ConfigError
from webhook_app.ops.circuit import CircuitGuard, first_failure, read_circuits
from webhook_app.policy import load_policy
from webhook_app.timefmt import iso, parse_time


def cb(at: float, code: str | None) -> dict:
    return {"type": "event_callbacks", "attributes": {"created_at": iso(at), "response_code": code}}


def test_first_failure_is_the_oldest_failure_after_the_newest_success():
    callbacks = [cb(10, "200"), cb(20, "500"), cb(30, None), cb(40, "503")]
    assert first_failure(callbacks) == 20
    assert first_failure(list(reversed(callbacks))) == 20  # whatever order they are listed in
    assert first_failure([cb(10, "500"), cb(20, "204")]) is None  # healed since
    assert first_failure([]) is None


def test_check_interval_must_stay_within_the_rate_limit():
    assert Settings.from_env({}).circuit_check_interval == 60
    assert Settings.from_env({"WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL": "0"}).circuit_check_interval == 0
    with pytest.raises(ConfigError, match="WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL"):
        Settings.from_env({"WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL": "0.2"})
    with pytest.raises(ConfigError, match="WEBHOOK_APP_CIRCUIT_AUTO_RESET"):
        Settings.from_env({"WEBHOOK_APP_CIRCUIT_AUTO_RESET": "maybe"})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(answer=lambda call: (500, 0.0))
    yield r
    r.close()


@pytest.fixture
def sandbox(receiver):
    with running(webhook_scenario(receiver.url), sender={"max_retries": 0, "concurrency": 1}) as server:
        api = Api(server)
        yield api
        api.close()


@pytest.fixture
def client(sandbox) -> Iterator[CommerceLayerClient]:
    c = CommerceLayerClient(
        api_base=sandbox.server.api_url,
        auth_url=sandbox.server.url + "/oauth/token",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    yield c
    c.close()


def fail(sandbox: Api, n: int) -> None:
    r = sandbox.control("POST", "/events", {"topic": "orders.place", "order_ids": ["OrdStripeA"] * n})
    assert r.status_code == 202
    assert sandbox.control("POST", "/sender/drain", {"timeout": 30}).json()["drained"]


def test_guard_warns_on_a_rising_count_and_resets_only_when_healthy(sandbox, client, sqlite_store, caplog):
    healthy = {"now": False}
    checks = []
    guard = CircuitGuard(
        client=client,
        store=sqlite_store,
        policy=load_policy(Settings().policy_path),
        healthy=lambda: healthy["now"],
        auto_reset=True,
        warn_failures=5,
        backfill_margin=0,
        on_check=checks.append,
    )
    fail(sandbox, 3)
    with caplog.at_level(logging.WARNING, logger="webhook_app.ops.circuit"):
        assert guard.check().warned == []  # 3 < 5
        fail(sandbox, 4)
        assert guard.check().warned == ["HookTestAa"]  # 7, rising
        assert guard.check().warned == []  # still 7: not rising
    assert [r.message for r in caplog.records] == ["Commerce Layer's failure count for this webhook is rising"]
    assert caplog.records[0].failures == 7

    fail(sandbox, 23)  # 30: open
    [c] = read_circuits(client)
    assert c.open and c.failures == 30
    first = min(
        parse_time(x["created_at"])
        for x in sandbox.control("GET", "/event_callbacks?webhook_id=HookTestAa").json()["event_callbacks"]
    )
    check = guard.check()
    assert check.unhealthy and check.reset == [] and read_circuits(client)[0].open
    assert sqlite_store.list_operations() == []

    healthy["now"] = True
    check = guard.check()
    assert check.reset == ["HookTestAa"] and not read_circuits(client)[0].open
    [reset] = sqlite_store.list_operations(kind="circuit_reset")
    assert reset.subject == "HookTestAa" and reset.detail["failures"] == 30
    # the gap starts at the first failed callback Commerce Layer lists, not when the guard first looked
    assert parse_time(reset.detail["gap_since"]) == first
    [backfill] = sqlite_store.list_operations(kind="backfill")
    assert backfill.detail["since"] == iso(first)
    assert "HookTestAa" in check.backfilled
    assert checks[-1] is check
    # once reset, the next check does nothing more
    again = guard.check()
    assert again.reset == [] and again.backfilled == {}
    assert len(sqlite_store.list_operations()) == 2


def test_dry_run_never_resets(sandbox, client, sqlite_store):
    guard = CircuitGuard(
        client=client,
        store=sqlite_store,
        policy=load_policy(Settings().policy_path),
        healthy=lambda: True,
        auto_reset=True,
    )
    fail(sandbox, 30)
    check = guard.check(dry_run=True)
    assert check.reset == [] and read_circuits(client)[0].open


def test_webhooks_watch_command_warns_resets_and_backfills(sandbox, tmp_path):
    env = {
        **base_env(),
        "CL_CLIENT_ID": CLIENT_ID,
        "CL_CLIENT_SECRET": CLIENT_SECRET,
        "CL_API_BASE": sandbox.server.api_url,
        "CL_AUTH_URL": sandbox.server.url + "/oauth/token",
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
    }

    def watch(*args, **extra):
        r = subprocess.run(
            [sys.executable, "-m", "webhook_app", "webhooks", "watch", *args],
            capture_output=True,
            text=True,
            env={**env, **extra},
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    subprocess.run([sys.executable, "-m", "webhook_app", "db", "upgrade"], env=env, check=True, capture_output=True)
    fail(sandbox, 6)
    row = json.loads(watch("--json"))
    assert row["circuit_failure_count"] == 6 and row["warning"] and not row["reset"]
    fail(sandbox, 24)
    assert "circuit=open failures=30  WARNING left open" in watch()  # auto reset is off by default
    # Without a health URL the intake cannot be checked (the database answering says nothing of
    # whether anything listens): the guard leaves the circuit open and says what to set.
    out = watch(WEBHOOK_APP_CIRCUIT_AUTO_RESET="on")
    assert "WEBHOOK_APP_CIRCUIT_HEALTH_URL is not set" in out
    assert "circuit=open failures=30  WARNING intake not checked" in out
    assert read_circuits_of(sandbox)[0].open
    with _answering(200) as url:
        down = url.rsplit(":", 1)[0] + f":{free_port()}/readyz"  # nothing listens there
        assert "WARNING intake not healthy" in watch(
            WEBHOOK_APP_CIRCUIT_AUTO_RESET="on", WEBHOOK_APP_CIRCUIT_HEALTH_URL=down
        )
        assert read_circuits_of(sandbox)[0].open
        out = watch(WEBHOOK_APP_CIRCUIT_AUTO_RESET="on", WEBHOOK_APP_CIRCUIT_HEALTH_URL=url)
    assert "circuit=open failures=30  WARNING reset backfilled" in out
    assert not read_circuits_of(sandbox)[0].open


@contextlib.contextmanager
def _answering(status: int) -> Iterator[str]:
    """A stand-in for a web instance's /readyz answering `status`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/readyz"
    finally:
        server.shutdown()
        server.server_close()


def read_circuits_of(sandbox: Api):
    c = CommerceLayerClient(
        api_base=sandbox.server.api_url,
        auth_url=sandbox.server.url + "/oauth/token",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    try:
        return read_circuits(c)
    finally:
        c.close()


class _FirstReadFrom:
    """The real client, except that its first `list_webhooks` answers what was read earlier: a
    guard whose check began before another guard's reset."""

    def __init__(self, client: CommerceLayerClient, earlier: list[dict]) -> None:
        self._client = client
        self._earlier: list[dict] | None = earlier

    def list_webhooks(self) -> list[dict]:
        earlier, self._earlier = self._earlier, None
        return earlier if earlier is not None else self._client.list_webhooks()

    def __getattr__(self, name: str):
        return getattr(self._client, name)


def test_two_guards_reset_and_backfill_a_circuit_once(sandbox, client, tmp_path):
    """Every worker process runs a guard: one reset and one backfill per webhook and gap."""
    from webhook_app.store.sqlite import SQLiteStore

    stores = [SQLiteStore(str(tmp_path / "guards.db")) for _ in range(2)]
    stores[0].migrate()

    def guard(n: int, c) -> CircuitGuard:
        return CircuitGuard(
            client=c,
            store=stores[n],
            policy=load_policy(Settings().policy_path),
            healthy=lambda: True,
            auto_reset=True,
            backfill_margin=0,
        )

    try:
        fail(sandbox, 30)
        earlier = client.list_webhooks()  # the second guard's read, before the first one resets
        assert guard(0, client).check().reset == ["HookTestAa"]
        second = guard(1, _FirstReadFrom(client, earlier)).check()
        assert [c.open for c in second.circuits] == [True]  # it saw the circuit open ...
        assert second.reset == [] and second.backfilled == {}  # ... and did nothing: already reset
        assert len(stores[0].list_operations(kind="circuit_reset")) == 1
        assert len(stores[0].list_operations(kind="backfill")) == 1
        patches = sandbox.control("GET", "/requests?route=webhooks.patch").json()["requests"]
        assert len([p for p in patches if "_reset_circuit" in json.dumps(p["body"])]) == 1

        # while another guard holds the webhook's lease, a guard leaves the circuit alone
        fail(sandbox, 30)
        assert stores[1].take_lease("circuit:HookTestAa", owner="guard1", seconds=60, now=time.time())
        assert guard(0, client).check().reset == [] and read_circuits(client)[0].open
        stores[1].release_lease("circuit:HookTestAa", owner="guard1")
        assert guard(0, client).check().reset == ["HookTestAa"]
    finally:
        for s in stores:
            s.close()
