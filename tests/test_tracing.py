"""Traces (`webhook_app.tracing`): one trace from the intake through the job to each Commerce Layer call.

The real app (intake through Flask's test client), the real worker and the real client against
the sandbox over HTTP, with the SDK's in-memory exporter. The trace context crosses the store
(stored beside the job at intake, read back by the worker's claim), as between two processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from support.sandbox import CLIENT_ID, CLIENT_SECRET, running

from webhook_app import tracing
from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.policy import load_policy
from webhook_app.signing import WebhookSecret, sign
from webhook_app.tokens import ADMIN, Tokens
from webhook_app.web import create_app
from webhook_app.worker import Worker

trace_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk is in the test extra")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

HOOK_SECRET = "tracing-hook-secret-0123456789"
ADMIN_KEY = "tracing-admin-key-0123456789abcdef"
INCLUDES = "customer,payment_source,market,line_items,available_customer_payment_sources"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    provider = trace_sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracing.use_provider(provider)
    yield exp
    tracing.shutdown()


@pytest.fixture
def sandbox():
    with running() as server:
        yield server


def stack(settings_factory, sqlite_store, sandbox):
    settings = settings_factory(
        webhook_secrets=(WebhookSecret("hook", HOOK_SECRET.encode()),),
        mode="enforce",
        cl_client_id=CLIENT_ID,
        cl_client_secret=CLIENT_SECRET,
        cl_api_base=sandbox.api_url,
        cl_auth_url=sandbox.url + "/oauth/token",
        admin_keys=(ADMIN_KEY,),
    )
    app = create_app(settings, store=sqlite_store).test_client()
    holder: dict[str, Worker] = {}
    client = CommerceLayerClient.from_settings(settings, on_call=lambda call: holder["w"].note_call(call))
    worker = Worker(store=sqlite_store, policy=load_policy(settings.policy_path), settings=settings, client=client)
    holder["w"] = worker
    return app, worker, client


def webhook_body(sandbox, order_id: str) -> bytes:
    """The order as Commerce Layer's webhook would carry it (read from the sandbox's API)."""
    import requests

    s = requests.Session()
    tok = s.post(
        sandbox.url + "/oauth/token",
        json={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        timeout=10,
    ).json()["access_token"]
    doc = s.get(
        f"{sandbox.api_url}/orders/{order_id}",
        params={"include": INCLUDES},
        headers={"Accept": "application/vnd.api+json", "Authorization": f"Bearer {tok}"},
        timeout=10,
    ).json()
    s.close()
    doc.pop("meta", None)  # webhook bodies carry no document meta
    return json.dumps(doc, separators=(",", ":")).encode()


def deliver(app, body: bytes, **headers: str):
    return app.post(
        "/webhooks/commercelayer",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-CommerceLayer-Topic": "orders.place",
            "X-CommerceLayer-Signature": sign(body, secret=HOOK_SECRET),
            **headers,
        },
    )


def test_one_trace_runs_from_receipt_to_patch(exporter, settings_factory, sqlite_store, sandbox):
    app, worker, client = stack(settings_factory, sqlite_store, sandbox)
    try:
        r = deliver(app, webhook_body(sandbox, "OrdStripeA"))
        assert r.status_code == 202, r.get_data(as_text=True)
        [outcome] = worker.drain()
        assert outcome.outcome == "applied"
    finally:
        client.close()
    spans = exporter.get_finished_spans()
    by_name: dict[str, list] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    [intake] = by_name["webhook intake"]
    [job] = by_name["job attempt"]
    [patch] = by_name["commercelayer PATCH orders.patch"]
    # one trace id; the job is the intake's child (across the store), the PATCH the job's
    assert {s.context.trace_id for s in spans} == {intake.context.trace_id}
    assert intake.parent is None
    assert job.parent.span_id == intake.context.span_id
    assert patch.parent.span_id == job.context.span_id
    assert patch.attributes["http.response.status_code"] == 200
    assert job.attributes["webhook_app.outcome"] == "applied"
    assert job.attributes["webhook_app.order_id"] == "OrdStripeA"
    cl_trace_id = patch.attributes["commercelayer.trace_id"]
    assert cl_trace_id

    # Commerce Layer's trace id (the answer's meta.trace_id) is recorded on the attempt...
    delivery_id = r.json["delivery_id"]
    stored = sqlite_store.get_delivery(delivery_id)
    [attempt] = stored.attempts
    assert attempt["cl_trace_ids"].split(",")[-1] == cl_trace_id
    assert attempt["trace_id"] == f"{intake.context.trace_id:032x}"
    # ... and shown on the admin API and page (what Commerce Layer's support asks for)
    tok = Tokens(ADMIN, (ADMIN_KEY,)).make(ttl=600)
    api = app.get(f"/admin/deliveries/{delivery_id}", headers={"Authorization": f"Bearer {tok}"}).json
    assert cl_trace_id in api["attempts"][0]["commercelayer_trace_ids"]
    assert app.post("/admin/login", data={"token": tok}).status_code == 303
    html = app.get(f"/admin/view/deliveries/{delivery_id}").get_data(as_text=True)
    assert cl_trace_id in html and attempt["trace_id"] in html


def test_an_incoming_traceparent_is_continued(exporter, settings_factory, sqlite_store, sandbox):
    app, worker, client = stack(settings_factory, sqlite_store, sandbox)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        assert deliver(app, webhook_body(sandbox, "OrdAdyenAa"), traceparent=parent).status_code == 202
        worker.drain()
    finally:
        client.close()
    assert {f"{s.context.trace_id:032x}" for s in exporter.get_finished_spans()} == {"0af7651916cd43dd8448eb211c80319c"}


def test_off_by_default_nothing_is_stored_but_commerce_layers_trace_ids(settings_factory, sqlite_store, sandbox):
    assert not tracing.enabled() and tracing.carrier() == {}
    app, worker, client = stack(settings_factory, sqlite_store, sandbox)
    try:
        r = deliver(app, webhook_body(sandbox, "OrdStripeA"))
        now = time.time()  # claimed in the worker's name and time, as its loop does
        job = sqlite_store.claim_job(worker=worker.id, lease_seconds=60, now=now)
        assert job is not None and job.trace_context == {}
        worker.process(job, claimed_at=now)
    finally:
        client.close()
    [attempt] = sqlite_store.get_delivery(r.json["delivery_id"]).attempts
    assert attempt["trace_id"] is None and attempt["cl_trace_ids"]  # still recorded: they come from the answers


def test_configure_follows_the_standard_variables():
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    assert tracing.configure({}) is False and not tracing.enabled()
    try:
        assert tracing.configure({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "wa-test"}) is True
        assert tracing.enabled()
        with tracing.span("x") as s:
            assert s.trace_id and tracing.carrier()["traceparent"].split("-")[1] == s.trace_id
    finally:
        tracing.shutdown()
    assert not tracing.enabled()


def test_each_attempt_keeps_its_own_commerce_layer_trace_ids_across_a_requeue(settings_factory, sqlite_store, sandbox):
    """A PATCH refused once (dead letter at max_attempts=1), requeued, then applied: attempt 2 is
    numbered on, and its Commerce Layer trace ids are recorded on it alone."""
    import requests

    settings_factory = _with(settings_factory, max_attempts=1)
    app, worker, client = stack(settings_factory, sqlite_store, sandbox)
    rule = {"route": "orders.patch", "error_share": 1.0, "error_status": 503, "requests": 1}
    requests.put(f"{sandbox.url}/_sandbox/faults", json={"seed": 1, "rules": [rule]}, timeout=10).raise_for_status()
    try:
        r = deliver(app, webhook_body(sandbox, "OrdStripeA"))
        assert [o.state for o in worker.drain()] == ["dead"]
        assert sqlite_store.requeue(r.json["job_id"], now=time.time())
        assert [o.outcome for o in worker.drain()] == ["applied"]
    finally:
        client.close()
    first, second = sqlite_store.get_delivery(r.json["delivery_id"]).attempts
    assert (first["number"], first["outcome"], second["number"], second["outcome"]) == (1, "dead", 2, "applied")
    # (the sandbox's injected 503 carries no trace id; before, attempt 2's were written on both rows)
    ids1, ids2 = set((first["cl_trace_ids"] or "").split(",")) - {""}, set(second["cl_trace_ids"].split(","))
    assert ids2 and not ids1 & ids2


def _with(factory, **extra):
    return lambda **kw: factory(**{**extra, **kw})
