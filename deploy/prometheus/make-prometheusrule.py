"""Write deploy/k8s/monitoring/prometheusrule.yaml from deploy/prometheus/alerts.yml (the same rules
as a Prometheus Operator PrometheusRule). Run after changing alerts.yml; the suite checks they agree:

    python3 deploy/prometheus/make-prometheusrule.py
"""

from pathlib import Path

import yaml


class Dumper(yaml.SafeDumper):
    """Block sequences indented under their key, as yamllint's default wants."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "k8s" / "monitoring" / "prometheusrule.yaml"
HEADER = """\
# yamllint disable rule:line-length
# Generated from deploy/prometheus/alerts.yml by deploy/prometheus/make-prometheusrule.py: edit
# alerts.yml, then run that script (tests/test_observability.py checks the two agree).
# Needs the Prometheus Operator's CRDs; `release` must match your Prometheus' ruleSelector.
"""

rules = yaml.safe_load((HERE / "alerts.yml").read_text())
doc = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "webhook-app", "labels": {"app.kubernetes.io/name": "webhook-app", "release": "prometheus"}},
    "spec": {"groups": rules["groups"]},
}
OUT.write_text(HEADER + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True))
