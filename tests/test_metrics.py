"""/metrics through the app, and the metrics of a worker run."""

from __future__ import annotations

import random
import time

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from support import signed_headers
from support.builders import order_body

from webhook_app import metrics
from webhook_app.commercelayer.client import CommerceLayerClient
from webhook_app.config import bundled_policy_path
from webhook_app.policy import load_policy
from webhook_app.web import create_app
from webhook_app.worker import Worker


def scrape(client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    ctype = r.headers["Content-Type"]
    assert r.status_code == 200 and ctype == CONTENT_TYPE_LATEST and ctype.count("charset=") == 1, ctype
    out = {}
    for fam in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_intake_and_queue_metrics(settings_factory, sqlite_store, clock):
    client = create_app(settings_factory(), store=sqlite_store, clock=clock).test_client()
    before = scrape(client)
    body = order_body("oM1")
    client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body))
    client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body))
    client.post(
        "/webhooks/commercelayer", data=body, headers={**signed_headers(body), "X-CommerceLayer-Signature": "x"}
    )
    client.post("/webhooks/commercelayer", data=b"{}", headers=signed_headers(b"{}"))
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("webhook_app_deliveries_total", topic="orders.place", outcome="accepted") == 1
    assert delta("webhook_app_deliveries_total", topic="orders.place", outcome="duplicate") == 1
    assert delta("webhook_app_intake_rejections_total", reason="invalid_signature") == 1
    assert delta("webhook_app_intake_rejections_total", reason="invalid_payload") == 1
    assert delta("webhook_app_intake_seconds_count") == 4
    assert value(after, "webhook_app_queue_jobs", state="pending") == 1
    assert value(after, "webhook_app_database_up") == 1
    clock.advance(30)
    assert value(scrape(client), "webhook_app_queue_oldest_pending_age_seconds") == 30


def test_worker_metrics_decisions_calls_and_429(settings_factory, sqlite_store, clock, fake_cl):
    settings = settings_factory(
        mode="enforce",
        cl_api_base=fake_cl.url,
        cl_client_id=fake_cl.client_id,
        cl_client_secret=fake_cl.client_secret,
        cl_auth_url=fake_cl.url + "/oauth/token",
        max_attempts=1,
    )
    app = create_app(settings, store=sqlite_store, clock=clock)
    client = app.test_client()
    before = scrape(client)
    for oid in ("oW1", "oW2"):
        fake_cl.add_order(oid)
        body = order_body(oid)
        client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body))
    fake_cl.fail("orders.patch", status=429)
    cl = CommerceLayerClient.from_settings(settings, on_call=metrics.record_call)
    w = Worker(
        store=sqlite_store,
        policy=load_policy(bundled_policy_path()),
        settings=settings,
        client=cl,
        clock=clock,
        rng=random.Random(0),
        observer=metrics.record_worker_event,
    )
    w.drain()
    cl.close()
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("webhook_app_commercelayer_responses_total", route="orders.patch", status="429") == 1
    assert delta("webhook_app_commercelayer_responses_total", route="orders.patch", status="200") == 1
    assert delta("webhook_app_commercelayer_request_seconds_count", route="orders.patch") == 2
    assert delta("webhook_app_dead_letters_total") == 1
    assert (
        delta(
            "webhook_app_decisions_total",
            rule="save-registered-customer-source",
            action="save_payment_source",
            outcome="applied",
        )
        == 1
    )
    assert value(after, "webhook_app_queue_jobs", state="dead") == 1
    assert (
        value(
            after,
            "webhook_app_recorded_decisions_total",
            rule="save-registered-customer-source",
            action="save_payment_source",
            outcome="applied",
        )
        == 1
    )


def test_a_source_not_allowed_is_counted_as_such(settings_factory, sqlite_store, clock):
    from webhook_app.sources import parse_allowed_sources

    settings = settings_factory(allowed_sources=parse_allowed_sources("commercelayer"))
    client = create_app(settings, store=sqlite_store, clock=clock).test_client()
    before = scrape(client)
    body = order_body("oMSrc")
    r = client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body))  # from 127.0.0.1
    assert r.status_code == 403
    after = scrape(client)
    key = ("webhook_app_intake_rejections_total", {"reason": "source_not_allowed"})
    assert value(after, key[0], **key[1]) - value(before, key[0], **key[1]) == 1
    assert value(after, "webhook_app_intake_responses_total", code="403") >= 1
    assert "source_not_allowed" in metrics.REJECTIONS._documentation


def test_importing_the_cli_loads_no_prometheus_client_and_the_metrics_no_flask():
    """prometheus_client picks its mode when first imported, so the command line must set
    PROMETHEUS_MULTIPROC_DIR before anything imports it: importing `webhook_app.cli` loads none of
    it. And the metrics the worker records and serves (webhook_app/metrics.py) need no Flask."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "import webhook_app.cli\n"
        "assert 'prometheus_client' not in sys.modules, 'webhook_app.cli loads prometheus_client'\n"
        "import webhook_app.metrics\n"
        "assert 'prometheus_client' in sys.modules\n"
        "assert not {'flask', 'werkzeug'} & set(sys.modules), 'webhook_app.metrics loads Flask'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_flood_of_scrapes_does_not_read_an_expensive_database_each_time(
    settings_factory, sqlite_store, clock, monkeypatch
):
    """/metrics needs no credentials (any local user reaches the operator address): 38 scrapes of a
    database of 400,000 decisions (0.7 s each) from 16 clients held a signed delivery 0.5-1.7 s. A
    read that costs that much is shared by the scrapes that follow it for ten times its duration
    (never past a move of the clock by as much); a cheap one is read each time."""
    monkeypatch.setattr(metrics.StoreCollector, "HOLD_FROM_JOBS", 0)  # a big database, as far as it knows
    client = create_app(settings_factory(), store=sqlite_store, clock=clock).test_client()
    reads = []
    cheap = sqlite_store.decision_counts

    def slow() -> list:
        reads.append(clock())
        time.sleep(0.12)
        return cheap()

    sqlite_store.decision_counts = slow  # type: ignore[method-assign]
    for _ in range(10):
        assert value(scrape(client), "webhook_app_database_up") == 1
    assert len(reads) == 1
    body = order_body("oHeld1")
    client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body))
    assert value(scrape(client), "webhook_app_queue_jobs", state="pending") == 0  # held: moments old
    clock.advance(5)  # past the hold (10 x 0.12 s): read again
    assert value(scrape(client), "webhook_app_queue_jobs", state="pending") == 1
    assert len(reads) == 2
    sqlite_store.decision_counts = cheap  # type: ignore[method-assign]
    time.sleep(1.3)
    client.post("/webhooks/commercelayer", data=order_body("oHeld2"), headers=signed_headers(order_body("oHeld2")))
    assert value(scrape(client), "webhook_app_queue_jobs", state="pending") == 2
    assert value(scrape(client), "webhook_app_queue_jobs", state="pending") == 2  # cheap: never held


def test_a_slow_read_of_a_small_database_is_never_kept(settings_factory, sqlite_store, clock):
    """Fewer jobs than HOLD_FROM_JOBS: a slow read there is a busy host, and each scrape reads again."""
    client = create_app(settings_factory(), store=sqlite_store, clock=clock).test_client()
    cheap = sqlite_store.decision_counts

    def slow() -> list:
        time.sleep(0.12)
        return cheap()

    sqlite_store.decision_counts = slow  # type: ignore[method-assign]
    scrape(client)
    body = order_body("oSmall1")
    client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body))
    assert value(scrape(client), "webhook_app_queue_jobs", state="pending") == 1
