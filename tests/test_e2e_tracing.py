"""End to end: one trace from Commerce Layer's call to our PATCH, across the web and worker processes.

Real processes (`webhook-app web`, `webhook-app worker`, the sandbox posting the webhook), traces
turned on the standard way (`OTEL_TRACES_EXPORTER=console`, the SDK printing each finished span as
JSON to the process's output). The intake span is in the web process, the job and Commerce Layer
spans in the worker process; the trace context travels through the database.
"""

from __future__ import annotations

import json

import pytest
import requests
from support.procs import Service, free_port, wait_http, wait_until

pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk is in the test extra")

pytestmark = pytest.mark.e2e

SHARED_SECRET = "trace-shared-secret-0123456789"
CLIENT = {"client_id": "trace-client", "client_secret": "trace-client-secret-abcdef", "scope": "market:code:eu"}


def spans_in(text: str) -> list[dict]:
    """The span JSON documents ConsoleSpanExporter wrote among the JSON log lines."""
    decoder = json.JSONDecoder()
    out, pos = [], 0
    while (start := text.find("{\n", pos)) != -1:
        try:
            doc, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        if isinstance(doc, dict) and "context" in doc and "name" in doc:
            out.append(doc)
        pos = end
    return out


def test_intake_job_and_commerce_layer_spans_share_one_trace_across_processes(tmp_path):
    sb_port, web_port = free_port(), free_port()
    sb_url, web_url = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{web_port}"
    scenario = {
        "sandbox": {"sender": {"timeout": 5, "max_retries": 3, "backoff_base": 0.2}},
        "clients": [CLIENT],
        "customers": [{"email": "reg@example.com", "has_password": True}],
        "orders": [
            {
                "id": "OrdTrace01",
                "customer": "reg@example.com",
                "status": "pending",
                "payment_source": {"type": "stripe_payments", "card_last4": "4242"},
            }
        ],
        "webhooks": [
            {
                "id": "HookTrace1",
                "topic": "orders.place",
                "callback_url": web_url + "/webhooks/commercelayer",
                "include_resources": ["customer", "payment_source", "market", "available_customer_payment_sources"],
                "shared_secret": SHARED_SECRET,
            }
        ],
        "markets": [{"code": "eu", "name": "Europe"}],
    }
    (tmp_path / "scenario.json").write_text(json.dumps(scenario))
    env = {
        "CL_WEBHOOK_SECRETS": f"sandbox:{SHARED_SECRET}",
        "CL_CLIENT_ID": CLIENT["client_id"],
        "CL_CLIENT_SECRET": CLIENT["client_secret"],
        "CL_SCOPE": CLIENT["scope"],
        "CL_API_BASE": sb_url + "/api",
        "CL_AUTH_URL": sb_url + "/oauth/token",
        "WEBHOOK_APP_MODE": "enforce",
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'svc.db'}",
        "WEBHOOK_APP_POLL_INTERVAL": "0.05",
        "WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL": "0",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "webhook-app-e2e",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    procs = []
    try:
        sandbox = Service(
            ["sandbox", "--port", str(sb_port), "--seed", str(tmp_path / "scenario.json")], {}, tmp_path / "sb.log"
        )
        procs.append(sandbox)
        wait_http(sb_url + "/_sandbox/health", proc=sandbox.proc)
        web = Service(["web", "--bind", f"127.0.0.1:{web_port}", "--workers", "1"], env, tmp_path / "web.log")
        procs.append(web)
        wait_http(web_url + "/readyz", proc=web.proc)
        worker = Service(["worker"], env, tmp_path / "worker.log")
        procs.append(worker)
        r = requests.post(
            sb_url + "/_sandbox/events",
            json={"topic": "orders.place", "order_ids": ["OrdTrace01"], "transition": True},
            timeout=10,
        )
        assert r.status_code == 202

        def names(svc):
            return {s["name"] for s in spans_in(svc.output())}

        wait_until(lambda: "webhook intake" in names(web), timeout=30, what="the intake span exported")
        wait_until(
            lambda: {"job attempt", "commercelayer PATCH orders.patch"} <= names(worker),
            timeout=30,
            what="the job and PATCH spans exported",
        )
        web_spans, worker_spans = spans_in(web.output()), spans_in(worker.output())
    finally:
        for p in reversed(procs):
            p.stop()
    [intake] = [s for s in web_spans if s["name"] == "webhook intake"]
    [job] = [s for s in worker_spans if s["name"] == "job attempt"]
    [patch] = [s for s in worker_spans if s["name"] == "commercelayer PATCH orders.patch"]
    trace_id = intake["context"]["trace_id"]
    assert job["context"]["trace_id"] == patch["context"]["trace_id"] == trace_id
    assert job["parent_id"] == intake["context"]["span_id"]
    assert patch["parent_id"] == job["context"]["span_id"]
    assert patch["attributes"]["commercelayer.trace_id"]
    assert intake["resource"]["attributes"]["service.name"] == "webhook-app-e2e"
