"""What operators watch: the new metrics, the alert rules (promtool), the PrometheusRule, the dashboard.

The alert rules and the dashboard may name only metrics the service really exports: the names
are taken from the metric objects the service defines (prometheus_client's registry) and from
the families the store collector yields against a real database, not from a list kept here.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

from prometheus_client import REGISTRY
from support.deploy_tools import DEPLOY, K8S, load_yaml, load_yaml_docs, need_tool
from test_metrics import scrape, value

from webhook_app import metrics
from webhook_app.commercelayer import credentials
from webhook_app.ops.circuit import Check, Circuit
from webhook_app.web import create_app
from webhook_app.worker import Worker

PROM = DEPLOY / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERT_TESTS = PROM / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "webhook-app.json"
NAME = re.compile(r"\bwebhook_app_[a-z0-9_]+")


def exported_names(store) -> set[str]:
    """Every sample name /metrics can carry: counters as `_total`, histograms as their series
    (in enforce mode, once a worker has recorded what Commerce Layer said of the credentials)."""
    store.set_status(credentials.NAME, credentials.REFUSED, reason="HTTP 401", source="w", now=time.time())
    families = [*REGISTRY.collect(), *metrics.StoreCollector(store, enforce=True).collect()]
    out = set()
    for fam in families:
        if not fam.name.startswith("webhook_app_"):
            continue
        if fam.type == "counter":
            out |= {fam.name + "_total"}
        elif fam.type == "histogram":
            out |= {fam.name + "_bucket", fam.name + "_count", fam.name + "_sum"}
        else:
            out.add(fam.name)
    return out


def alert_rules() -> list[dict]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"]]


# --- the new metrics, as /metrics shows them ------------------------------------------------


def test_intake_answers_are_counted_by_status_code(settings_factory, sqlite_store, clock):
    from support import signed_headers
    from support.builders import order_body

    client = create_app(settings_factory(), store=sqlite_store, clock=clock).test_client()
    before = scrape(client)
    body = order_body("oObs1")
    client.post("/webhooks/commercelayer", data=body, headers=signed_headers(body))
    client.post(
        "/webhooks/commercelayer", data=body, headers={**signed_headers(body), "X-CommerceLayer-Signature": "x"}
    )
    after = scrape(client)
    for code in ("202", "401"):
        assert (
            value(after, "webhook_app_intake_responses_total", code=code)
            - value(before, "webhook_app_intake_responses_total", code=code)
            == 1
        )
    assert value(after, "webhook_app_database_bytes") == sqlite_store.database_bytes() > 0


def test_circuit_check_sets_the_gauges(settings_factory, sqlite_store, clock):
    client = create_app(settings_factory(), store=sqlite_store, clock=clock).test_client()
    before = scrape(client)
    hook = {"webhook_id": "HookObs1", "topic": "orders.place"}
    metrics.record_circuit_check(Check(circuits=[Circuit("HookObs1", "orders.place", "u", "closed", 7)]))
    s = scrape(client)
    assert value(s, "webhook_app_circuit_failure_count", **hook) == 7
    assert value(s, "webhook_app_circuit_open", **hook) == 0
    assert value(s, "webhook_app_circuit_last_check_timestamp_seconds") > time.time() - 60
    metrics.record_circuit_check(Check(circuits=[Circuit("HookObs1", "orders.place", "u", "open", 30)]))
    assert value(scrape(client), "webhook_app_circuit_open", **hook) == 1
    metrics.record_circuit_check(
        Check(
            circuits=[Circuit("HookObs1", "orders.place", "u", "open", 30)],
            reset=["HookObs1"],
            backfilled={"HookObs1": ["o1", "o2"]},
        )
    )
    s = scrape(client)
    assert (
        value(s, "webhook_app_circuit_open", **hook) == 0 and value(s, "webhook_app_circuit_failure_count", **hook) == 0
    )
    assert value(s, "webhook_app_circuit_resets_total") - value(before, "webhook_app_circuit_resets_total") == 1
    assert value(s, "webhook_app_backfilled_orders_total") - value(before, "webhook_app_backfilled_orders_total") == 2


def test_the_worker_loop_reports_each_poll(settings_factory, sqlite_store):
    from webhook_app.config import bundled_policy_path
    from webhook_app.policy import load_policy

    polls: list[float] = []
    stop = threading.Event()
    worker = Worker(
        store=sqlite_store,
        policy=load_policy(bundled_policy_path()),
        settings=settings_factory(poll_interval=0.01),
        on_poll=lambda at: (polls.append(at), len(polls) >= 3 and stop.set()),
    )
    worker.run(stop)
    assert len(polls) >= 3 and polls == sorted(polls)


# --- alert rules ----------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check():
    promtool = need_tool("promtool")
    r = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_pass_their_promtool_unit_tests():
    promtool = need_tool("promtool")
    r = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=120, cwd=PROM
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_summary_saying_what_to_do_and_a_firing_unit_test():
    tested = {
        t["alertname"]
        for case in load_yaml(ALERT_TESTS)["tests"]
        for t in case["alert_rule_test"]
        if t.get("exp_alerts")
    }
    rules = alert_rules()
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert len(rule["annotations"]["summary"]) > 60 and rule["annotations"]["description"], rule["alert"]
        assert rule["alert"] in tested, f"{rule['alert']} has no promtool test where it fires"
    wanted = [
        "dead_letters|queue_jobs",
        "oldest_pending_age",
        "store_unavailable",
        "intake_responses",
        "invalid_signature",
        'status="429"',
        "5\\.\\.",
        "circuit_failure_count",
        "circuit_open",
        "saved_without_entry",
        "database_bytes",
        "worker_last_poll",
        "commercelayer_credentials_ok",
    ]
    for what in wanted:
        assert any(re.search(what, r["expr"]) for r in rules), what


def test_alert_rules_name_only_exported_metrics(sqlite_store):
    exported = exported_names(sqlite_store)
    used = {n for r in alert_rules() for n in NAME.findall(r["expr"])}
    assert used and used <= exported, used - exported
    # and the unit tests feed the same names (so a renamed metric breaks them too)
    fed = {NAME.search(s["series"]).group(0) for t in load_yaml(ALERT_TESTS)["tests"] for s in t["input_series"]}
    assert fed <= exported, fed - exported


def test_the_kubernetes_kit_ships_the_same_rules_as_a_prometheusrule():
    kit = K8S / "monitoring"
    assert (kit / "kustomization.yaml").is_file()
    (rule,) = load_yaml_docs(kit / "prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"]


# --- the dashboard --------------------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def test_dashboard_queries_only_exported_metrics(sqlite_store):
    exported = exported_names(sqlite_store)
    used = {n for e in dashboard_exprs() for n in NAME.findall(e)}
    assert used <= exported, used - exported
    # every metric the alerts watch has a panel
    alerted = {n for r in alert_rules() for n in NAME.findall(r["expr"])}
    assert alerted <= used, alerted - used


def test_dashboard_is_importable_grafana_json():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert p["type"] in ("timeseries", "stat", "row", "table"), p["type"]
        for t in p.get("targets", []):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert any(v["name"] == "datasource" and v["type"] == "datasource" for v in board["templating"]["list"])


def test_grafana_dir_is_documented():
    page = (Path(__file__).parent.parent / "docs" / "reference" / "alerts.md").read_text()
    for name in ("deploy/prometheus/alerts.yml", "deploy/grafana/webhook-app.json", "deploy/k8s/monitoring"):
        assert name in page, name


def test_the_monitoring_kit_builds_with_kustomize():
    from support.deploy_tools import kustomize_build

    (rule,) = load_yaml_docs(kustomize_build(K8S / "monitoring"))
    assert rule["kind"] == "PrometheusRule" and rule["metadata"]["namespace"] == "webhook-app"


def test_the_dashboard_shows_wallet_activity_from_exported_metrics(sqlite_store):
    exported = exported_names(sqlite_store)
    assert {"webhook_app_wallet_activity_total", "webhook_app_wallet_expired_entries"} <= exported
    board = json.loads(DASHBOARD.read_text())
    wallet = [p for p in board["panels"] if "webhook_app_wallet_" in json.dumps(p.get("targets", []))]
    used = {n for p in wallet for t in p["targets"] for n in NAME.findall(t["expr"])}
    assert {"webhook_app_wallet_activity_total", "webhook_app_wallet_expired_entries"} <= used <= exported


def test_the_log_scrubber_redacts_secrets_and_tokens_wherever_they_are_and_leaves_clean_lines_alone():
    """A line with nothing to redact is checked once (its message and fields joined); a secret or
    a bearer token in the message, its arguments or any string field is still replaced."""
    import logging

    from webhook_app.logs import SecretScrubber

    scrubber = SecretScrubber(["s3cr3t-value", "short", "another-secret"])

    def record(msg, args=None, **fields):
        r = logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, None)
        r.__dict__.update(fields)
        return r

    clean = record("delivery %s", ("d1",), topic="orders.place", order_id=None, delivery_id=7, replay=False)
    assert scrubber.filter(clean) and clean.msg == "delivery d1" and clean.args is None
    assert (clean.topic, clean.order_id, clean.delivery_id, clean.replay) == ("orders.place", None, 7, False)

    dirty = record(
        "sent %s",
        ("s3cr3t-value",),
        detail="upstream said another-secret",
        auth="Bearer abcdefgh12345",
        note="ok",
        count=3,
    )
    scrubber.filter(dirty)
    assert dirty.msg == "sent [redacted]" and dirty.detail == "upstream said [redacted]"
    assert dirty.auth == "Bearer [redacted]" and dirty.note == "ok" and dirty.count == 3
    # the token is found at the start of a field, the secret at its end, each field on its own
    edges = record("x", None, a="bearer abcdefgh1", b="tail s3cr3t-value")
    scrubber.filter(edges)
    assert (edges.a, edges.b) == ("bearer [redacted]", "tail [redacted]")
    # `short` (under 6 characters) is no secret, and a line that only looks split is left alone
    kept = record("short bearer", None, a="abcdefgh12")
    scrubber.filter(kept)
    assert (kept.msg, kept.a) == ("short bearer", "abcdefgh12")


def test_a_log_line_is_one_compact_json_object_with_the_time_to_the_millisecond():
    import logging

    from webhook_app.logs import JsonFormatter

    formatter = JsonFormatter()
    for created, ts in [(1_796_668_000.25, "2026-12-07T18:26:40.250Z"), (1_796_668_001.0, "2026-12-07T18:26:41.000Z")]:
        r = logging.LogRecord("webhook_app.web.intake", logging.INFO, __file__, 1, "delivery %s", ("é",), None)
        r.created, r.msecs = created, (created - int(created)) * 1000
        r.__dict__.update({"topic": "orders.place", "delivery_id": 7, "replay": False, "when": object})
        line = formatter.format(r)
        assert line == (
            f'{{"ts":"{ts}","level":"info","logger":"webhook_app.web.intake","event":"delivery \\u00e9",'
            f'"topic":"orders.place","delivery_id":7,"replay":false,"when":"{object}"}}'
        )
