"""Scenarios (files, control API, generation), configuration, and the CLI as a process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from commercelayer_sandbox import Sandbox, SandboxConfig
from commercelayer_sandbox.errors import SandboxError
from commercelayer_sandbox.model import PAYMENT_SOURCE_TYPES
from commercelayer_sandbox.seed import read_scenario
from support.sandbox import Api, example, running

ROOT = Path(__file__).resolve().parents[1]


def load(scenario: dict) -> Sandbox:
    sandbox = Sandbox()
    sandbox.load_scenario(scenario)
    return sandbox


def test_example_covers_registered_and_guest_customers_and_every_payment_source_type():
    sandbox = load(example())
    state = sandbox.state.snapshot()
    types = {o["payment_source"]["type"] for o in state["orders"] if o["payment_source"]}
    assert types == PAYMENT_SOURCE_TYPES
    guests = [o for o in state["orders"] if o["guest"]]
    assert {o["customer_id"] is None for o in guests} == {True, False}
    assert any(c["has_password"] for c in state["customers"])
    assert any(not c["has_password"] for c in state["customers"])
    assert [w["id"] for w in state["customer_payment_sources"]] == ["WalletBobA"]
    assert state["clients"] == ["sandbox-client-id"]
    assert state["webhooks"][0]["include_resources"][0] == "customer"


def test_json_and_toml_scenarios_are_equivalent(tmp_path):
    data = example()
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(data))
    assert read_scenario(path) == data
    assert load(read_scenario(path)).state.snapshot()["orders"][0]["id"] == "OrdStripeA"


@pytest.mark.parametrize(
    ("scenario", "where"),
    [
        ({"orders": [{"customer": "ghost@example.com"}]}, "orders[0].customer"),
        ({"orders": [{"payment_source": "cash"}]}, "orders[0].payment_source.type"),
        ({"orders": [{"status": "shipped"}]}, "orders[0].status"),
        (
            {"customers": [{"email": "a@example.com"}, {"email": "a@example.com"}]},
            "customers[1].email",
        ),
        ({"webhooks": [{"topic": "customers.create", "callback_url": "http://x/"}]}, "webhooks[0]"),
        ({"sandbox": {"token_tll": 5}}, "sandbox.token_tll"),
        (
            {"generate": {"orders": 3, "payment_source_types": ["cash"]}},
            "generate.payment_source_types",
        ),
        ({"oders": []}, ""),
    ],
)
def test_bad_scenarios_name_the_offending_entry(scenario, where):
    with pytest.raises(SandboxError) as exc:
        load(scenario)
    assert exc.value.path == where


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("orders = [")
    with pytest.raises(SandboxError, match="not valid toml"):
        read_scenario(bad)
    with pytest.raises(SandboxError, match="cannot read"):
        read_scenario(tmp_path / "missing.toml")


def test_generation_is_deterministic_given_the_seed():
    spec = {
        "generate": {
            "orders": 500,
            "guest_share": 0.2,
            "seed": 42,
            "payment_source_types": ["stripe_payments", "wire_transfers", "klarna_payments"],
        }
    }
    a, b = load(spec).state.snapshot(), load(spec).state.snapshot()
    c = load({"generate": {**spec["generate"], "seed": 43}}).state.snapshot()
    assert len(a["orders"]) == 500
    assert [o["id"] for o in a["orders"]] == [o["id"] for o in b["orders"]]
    assert [
        (o["payment_source"]["id"], o["payment_source"]["card_last4"], o["total_amount_cents"]) for o in a["orders"]
    ] == [(o["payment_source"]["id"], o["payment_source"]["card_last4"], o["total_amount_cents"]) for o in b["orders"]]
    assert {o["id"] for o in a["orders"]}.isdisjoint({o["id"] for o in c["orders"]})
    guests = sum(o["guest"] for o in a["orders"])
    assert 60 <= guests <= 140  # about 20 %
    assert {o["payment_source"]["type"] for o in a["orders"]} == set(spec["generate"]["payment_source_types"])
    created = [o["created_at"] for o in a["orders"]]
    assert created == sorted(created) and created[0] == "2024-01-01T00:00:00.000Z"


def test_generation_alongside_hand_written_records():
    data = example()
    data["generate"] = {"orders": 20, "seed": 1}
    state = load(data).state.snapshot()
    assert len(state["orders"]) == 14 + 20


def test_scenario_over_the_control_api_and_reset():
    with running() as server:
        api = Api(server)
        r = api.control(
            "POST",
            "/scenario",
            {
                "clients": [{"client_id": "c", "client_secret": "s"}],
                "generate": {"orders": 30, "seed": 5},
            },
        )
        assert r.status_code == 200 and r.json()["orders"] == 30 and r.json()["clients"] == ["c"]
        api.get_token("c", "s")
        assert api.get("/orders").json()["meta"]["record_count"] == 30
        r = api.control("POST", "/scenario?mode=merge", {"orders": [{"id": "ExtraOrder"}]})
        assert r.json()["orders"] == 31
        bad = api.control("POST", "/scenario", {"orders": [{"status": "nope"}]})
        assert bad.status_code == 400 and bad.json()["errors"][0]["source"]["pointer"] == "/orders/0/status"
        assert api.control("GET", "/health").json()["orders"] == 31  # a refused scenario changes nothing
        assert api.control("POST", "/reset", {}).json()["orders"] == 14  # back to the initial scenario
        assert api.control("POST", "/reset", {"empty": True}).json()["orders"] == 0
        api.close()


def test_config_over_the_control_api():
    with running() as server:
        api = Api(server)
        r = api.control("PUT", "/config", {"token_ttl": 60, "sender": {"max_retries": 2}})
        assert r.status_code == 200
        assert r.json()["token_ttl"] == 60 and r.json()["sender"]["max_retries"] == 2
        assert r.json()["sender"]["circuit_threshold"] == 30
        api.get_token()
        token = api.session.post(
            server.auth_url,
            json={
                "grant_type": "client_credentials",
                "client_id": "sandbox-client-id",
                "client_secret": "sandbox-client-secret",
            },
        )
        assert token.json()["expires_in"] == 60
        bad = api.control("PUT", "/config", {"sender": {"retries": 2}})
        assert bad.status_code == 400 and "sender.retries" in bad.json()["errors"][0]["detail"]
        api.close()


def test_config_defaults_are_commerce_layers():
    cfg = SandboxConfig()
    assert cfg.token_ttl == 7200
    assert [str(w) for w in cfg.api_limits] == ["100/60"] and [str(w) for w in cfg.endpoint_limits] == ["25/10"]
    assert [str(w) for w in cfg.auth_limits] == ["30/60"] and cfg.retry_after is None
    assert (cfg.sender.timeout, cfg.sender.max_retries, cfg.sender.circuit_threshold) == (
        5.0,
        10,
        30,
    )
    assert [cfg.sender.backoff(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert (cfg.page_size_default, cfg.page_size_max) == (10, 25)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_cli_runs_as_a_process():
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "commercelayer_sandbox",
            "--port",
            str(port),
            "--seed",
            "example",
            "--set",
            "sender.max_retries=3",
            "--token-ttl",
            "60",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"listening on http://127.0.0.1:{port}" in line, line + proc.stderr.read()
        with requests.Session() as s:
            s.trust_env = False
            health = s.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=5).json()
            assert health["status"] == "ok" and health["orders"] == 14
            config = s.get(f"http://127.0.0.1:{port}/_sandbox/config", timeout=5).json()
            assert config["sender"]["max_retries"] == 3 and config["token_ttl"] == 60
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.e2e
def test_cli_refuses_a_bad_scenario(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"orders": [{"status": "nope"}]}))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "commercelayer_sandbox", "--port", "0", "--seed", str(bad)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "orders[0].status" in done.stderr
    assert time.monotonic() - started < 30


def test_an_unstarted_sandbox_runs_no_threads():
    sandbox = load({"generate": {"orders": 3}, "sandbox": {"sender": {"concurrency": 3}}})
    sandbox.update_config({"sender": {"concurrency": 5}})
    assert not [t for t in threading.enumerate() if t.name == "sandbox-sender"]
    sandbox.start()
    try:
        assert len([t for t in threading.enumerate() if t.name == "sandbox-sender"]) == 5
    finally:
        sandbox.stop()
    assert not [t for t in threading.enumerate() if t.name == "sandbox-sender" and t.is_alive()]
