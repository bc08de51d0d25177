"""`webhook-app doctor`, the real command against the sandbox and a real SQLite file.

Each broken part flips its own line to a cross with the fix and the exit status to 1; a healthy
deployment passes every line; the command only reads (the sandbox's request log shows no write).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import base_env
from support.procs import free_port
from support.sandbox import CLIENT_ID, CLIENT_SECRET, Api, Receiver, example, running


class _Intake(http.server.BaseHTTPRequestHandler):
    """Stands in for the intake at the callback URL: 405 to a GET, as the real one answers."""

    def do_GET(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "POST")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


_INTAKE = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Intake)
threading.Thread(target=_INTAKE.serve_forever, daemon=True).start()
CALLBACK = f"http://127.0.0.1:{_INTAKE.server_address[1]}/webhooks/commercelayer"
SECRET = "doctor-test-shared-secret-0123456789"
FULL = [
    "available_customer_payment_sources",
    "available_customer_payment_sources.payment_source",
    "customer",
    "payment_source",
]
POLICY = """version = 1
[default]
action = "skip"
reason = "no rule matched"

[[rules]]
name = "place"
topics = [{topics}]
action = "save_payment_source"
"""


def scenario(hooks: list[dict[str, Any]]) -> dict[str, Any]:
    data = example()
    data["webhooks"] = hooks
    return data


def hook(topic: str, *, url: str = CALLBACK, secret: str = SECRET, include: list[str] | None = None, n: int = 0):
    return {
        "id": f"HookDoc{n:03d}",
        "topic": topic,
        "callback_url": url,
        "include_resources": include if include is not None else ["customer", "payment_source"],
        "shared_secret": secret,
    }


class Deployment:
    """The environment of one deployment: settings, a database upgraded, a policy."""

    def __init__(self, sandbox: Api, tmp: Path) -> None:
        self.sandbox = sandbox
        self.policy = tmp / "policy.toml"
        self.policy.write_text(POLICY.format(topics='"orders.place"'))
        self.env = {
            **base_env(os.environ["PATH"]),
            "HOME": str(tmp),
            "CL_CLIENT_ID": CLIENT_ID,
            "CL_CLIENT_SECRET": CLIENT_SECRET,
            "CL_API_BASE": sandbox.server.api_url,
            "CL_AUTH_URL": sandbox.server.url + "/oauth/token",
            "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
            "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp / 'w.db'}",
            "WEBHOOK_APP_POLICY": str(self.policy),
        }
        self.cli("db", "upgrade", check=True)

    def cli(self, *args: str, check: bool = False, **extra: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [sys.executable, "-m", "webhook_app", *args],
            capture_output=True,
            text=True,
            env={**self.env, **extra},
            timeout=60,
        )
        assert "Traceback" not in r.stderr, r.stderr
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def doctor(self, **extra: str) -> tuple[int, dict[str, dict[str, Any]]]:
        r = self.cli("doctor", "--callback-url", CALLBACK, "--json", **extra)
        checks = [json.loads(line) for line in r.stdout.splitlines()]
        return r.returncode, {c["name"]: c for c in checks}

    def run_worker_once(self) -> None:
        """A real worker, long enough to poll once (it records a heartbeat at its first poll)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhook_app", "worker"],
            env={**self.env, "WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL": "0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            assert proc.stdout is not None
            for line in proc.stdout:
                if "worker started" in line or time.monotonic() > deadline:
                    break
            time.sleep(1.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(answer=lambda call: (500, 0.0))
    yield r
    r.close()


def deployment(tmp_path: Path, hooks: list[dict[str, Any]], **config: Any) -> Iterator[Deployment]:
    with running(scenario(hooks), **config) as server:
        api = Api(server)
        try:
            yield Deployment(api, tmp_path)
        finally:
            api.close()


@pytest.fixture
def healthy(tmp_path: Path) -> Iterator[Deployment]:
    """Webhooks made by the real `webhooks register`, and the secrets it printed configured."""
    for d in deployment(tmp_path, []):
        out = d.cli("webhooks", "register", "--callback-url", CALLBACK, check=True).stdout
        d.env["CL_WEBHOOK_SECRETS"] = out.split("CL_WEBHOOK_SECRETS=")[1].strip()
        yield d


def failed(checks: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name, c in checks.items() if not c["ok"]}


def test_a_healthy_deployment_passes_every_check_and_doctor_writes_nothing(healthy):
    healthy.run_worker_once()
    seq = max((r["seq"] for r in healthy.sandbox.control("GET", "/requests").json()["requests"]), default=0)
    r = healthy.cli("doctor", "--callback-url", CALLBACK)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "all checks passed"
    names = [line.split(":")[0] for line in lines[:-1]]
    assert names == [
        "\u2713 settings",
        "\u2713 database",
        "\u2713 webhook secrets",
        "\u2713 policy",
        "\u2713 credentials",
        "\u2713 webhooks",
        "\u2713 webhook topics",
        "\u2713 webhook includes",
        "\u2713 webhook circuits",
        "\u2713 webhook signing",
        "\u2713 worker",
        "\u2713 callback URL",
    ]
    calls = [r for r in healthy.sandbox.control("GET", "/requests").json()["requests"] if r["seq"] > seq]
    assert calls and {c["method"] for c in calls} <= {"GET", "POST"}
    assert all(c["method"] == "GET" or c["path"].endswith("/oauth/token") for c in calls), calls
    assert CLIENT_SECRET not in r.stdout
    assert all(s.split(":")[1] not in r.stdout for s in healthy.env["CL_WEBHOOK_SECRETS"].split(","))


def test_a_callback_url_nothing_answers_at_is_a_failure(healthy):
    """A deployment whose every other line passes, and nothing listening at the callback URL."""
    healthy.run_worker_once()
    down = f"http://127.0.0.1:{free_port()}/webhooks/commercelayer"
    out = healthy.cli("webhooks", "register", "--callback-url", down, check=True).stdout
    healthy.env["CL_WEBHOOK_SECRETS"] = out.split("CL_WEBHOOK_SECRETS=")[1].strip()
    r = healthy.cli("doctor", "--callback-url", down)
    assert r.returncode == 1, r.stdout
    assert f"\u2717 callback URL: {down} does not answer" in r.stdout
    assert "1 checks failed" in r.stdout


def test_refused_credentials_name_the_variable_and_the_webhooks_are_not_passed(healthy):
    healthy.run_worker_once()
    code, checks = healthy.doctor(CL_CLIENT_SECRET="not-the-secret")
    assert code == 1
    assert failed(checks) == {"credentials", "webhooks"}
    assert "CL_CLIENT_SECRET" in checks["credentials"]["fix"]
    assert "CL_CLIENT_SECRET" not in checks["credentials"]["detail"]  # said once, in the fix
    assert checks["webhooks"]["detail"].startswith("not checked")


def test_no_worker_no_secrets_and_a_bad_policy_each_fail_their_line(healthy, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nversion = 1\n[default]\naction = "explode"\n')
    code, checks = healthy.doctor(CL_WEBHOOK_SECRETS="", WEBHOOK_APP_POLICY=str(bad))
    assert code == 1
    assert {"webhook secrets", "policy", "worker"} <= failed(checks)
    assert "CL_WEBHOOK_SECRETS" in checks["webhook secrets"]["fix"]
    assert checks["worker"]["detail"] == "no worker has ever polled this database"
    assert checks["webhook topics"]["detail"].startswith("not checked")  # needs a valid policy
    # With a good policy and a worker, only the secrets are wrong: signing fails with them.
    healthy.run_worker_once()
    code, checks = healthy.doctor(CL_WEBHOOK_SECRETS=f"old:{SECRET}")
    assert failed(checks) == {"webhook signing"}


def test_invalid_settings_fail_and_nothing_else_is_passed(healthy):
    code, checks = healthy.doctor(WEBHOOK_APP_MAX_ATTEMPTS="many")
    assert code == 1
    assert not checks["settings"]["ok"] and "WEBHOOK_APP_MAX_ATTEMPTS" in checks["settings"]["detail"]
    assert all(not c["ok"] for c in checks.values()) and len(checks) == 7


def test_webhooks_elsewhere_missing_topics_includes_and_unknown_secrets(tmp_path):
    hooks = [
        hook("orders.place", include=["customer"], secret="another-secret-nobody-configured-42", n=1),
        hook("orders.approve", n=2, include=FULL),
    ]
    for d in deployment(tmp_path, hooks):
        d.policy.write_text(POLICY.format(topics='"orders.place", "orders.pending"'))
        d.run_worker_once()
        code, checks = d.doctor()
        assert code == 1
        assert failed(checks) == {"webhook topics", "webhook includes", "webhook signing"}
        assert "orders.pending" in checks["webhook topics"]["detail"]
        assert "HookDoc001 (orders.place) lacks " in checks["webhook includes"]["detail"]
        assert ",payment_source" in checks["webhook includes"]["detail"]
        assert "HookDoc001" in checks["webhook signing"]["detail"]
        assert "HookDoc002" not in checks["webhook signing"]["detail"]
        assert "another-secret" not in json.dumps(checks)
        r = d.cli("doctor", "--callback-url", "https://elsewhere.example.test/hooks")
        assert r.returncode == 1 and "\u2717 webhooks: none points at https://elsewhere.example.test/hooks" in r.stdout
        assert "webhooks register --callback-url https://elsewhere.example.test/hooks" in r.stdout


def test_an_open_circuit_is_a_failure_with_the_reset_command(tmp_path, receiver):
    for d in deployment(
        tmp_path,
        [hook("orders.place", url=receiver.url)],
        sender={"max_retries": 0, "concurrency": 1, "backoff_base": 0.001, "backoff_factor": 1.0, "timeout": 2.0},
    ):
        r = d.sandbox.control("POST", "/events", {"topic": "orders.place", "order_ids": ["OrdStripeA"] * 30})
        assert r.status_code == 202
        assert d.sandbox.control("POST", "/sender/drain", {"timeout": 30}).json()["drained"]
        d.run_worker_once()
        r = d.cli("doctor", "--callback-url", receiver.url)
        assert r.returncode == 1
        line = next(x for x in r.stdout.splitlines() if "webhook circuits" in x)
        assert line.startswith("\u2717") and "HookDoc000 (orders.place)" in line and "--reset-open" in line


def test_a_misspelt_policy_attribute_fails_the_policy_line_with_the_nearest_name(healthy, tmp_path):
    typo = tmp_path / "typo.toml"
    typo.write_text(healthy.policy.read_text() + '\n[rules.when]\nall = [{ field = "order.gest", equals = false }]\n')
    code, checks = healthy.doctor(WEBHOOK_APP_POLICY=str(typo))
    assert code == 1 and "policy" in failed(checks)
    assert 'did you mean "guest"' in checks["policy"]["detail"]
