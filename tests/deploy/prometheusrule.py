"""The Kubernetes PrometheusRule of the kit, generated from deploy/prometheus/alerts.yml so that the two never drift.

It carries the groups that make sense on any cluster: the service's own alerts and its dependencies' (PostgreSQL,
Redis). The host and monitoring groups are left to the cluster's own monitoring (kube-prometheus-stack ships node
and target alerts). tests/deploy/test_kubernetes_monitoring.py checks the file is what this module writes.

Regenerate after changing the alerts: ``python -m tests.deploy.prometheusrule``.
"""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.support import DEPLOY

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
RULE_FILE = DEPLOY / "k8s" / "monitoring" / "prometheus-operator" / "prometheusrule.yaml"
KUBERNETES_GROUPS = ("library-api", "library-api-dependencies")

_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml (its groups {groups}) by
# `python -m tests.deploy.prometheusrule`; do not edit by hand: change alerts.yml and regenerate (tests/deploy
# checks they agree).
# kube-prometheus-stack picks up only PrometheusRules labelled with its release (`release: <release name>`) unless
# installed with prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false (docs/deployment.md).
"""


class _Dumper(yaml.SafeDumper):
    """YAML as a person writes it: multi-line expressions as literal blocks, keys in their given order."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def prometheus_rule() -> dict[str, Any]:
    """The PrometheusRule object: alerts.yml's Kubernetes groups, unchanged."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    chosen = [group for group in groups if group["name"] in KUBERNETES_GROUPS]
    assert [group["name"] for group in chosen] == list(KUBERNETES_GROUPS), "alerts.yml lost a group"
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "library-api",
            "labels": {"app.kubernetes.io/name": "library-api", "app.kubernetes.io/part-of": "library-api"},
        },
        "spec": {"groups": chosen},
    }


def render() -> str:
    """The text of the rule file."""
    body = yaml.dump(prometheus_rule(), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    return _HEADER.format(groups=", ".join(KUBERNETES_GROUPS)) + body


if __name__ == "__main__":
    RULE_FILE.write_text(render())
