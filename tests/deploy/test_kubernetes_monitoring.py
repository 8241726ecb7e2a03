"""Monitoring on Kubernetes, both ways the kit offers it, on what the real kustomize renders for every overlay:

- with the Prometheus Operator: the component deploy/k8s/monitoring/prometheus-operator (a ServiceMonitor and a
  PrometheusRule) added to each overlay, its objects validated against the Operator's own CustomResourceDefinition
  schemas (tests/deploy/schemas, from prometheus-operator v0.93.0; unknown fields refused, as the API server's strict
  field validation refuses them) by check-jsonschema, the ServiceMonitor's selector, port, job label and
  credential tied to the rendered Services, pods, NetworkPolicy and Secret template, the PrometheusRule identical
  to deploy/prometheus/alerts.yml's groups;
- with a plain Prometheus: deploy/k8s/monitoring/prometheus/scrape-config.yml validated against SchemaStore's
  published Prometheus configuration schema, checked by ``promtool check config`` with its Kubernetes discovery
  replaced by a static target (Debian's Prometheus is built without Kubernetes discovery, so its promtool refuses
  ``kubernetes_sd_configs`` outright; everything else of the job, authorization and relabelling included, is
  parsed by the real Prometheus), and its relabelling replayed against the rendered Services.

What cannot run here: a cluster with the Operator (the CRDs' CEL rules, ``x-kubernetes-validations``, are not
evaluated; the Operator's own reconciliation is not exercised) and Kubernetes service discovery (the relabelling is
replayed on the meta labels Prometheus documents for role ``endpoints``).
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.kustomize import render
from tests.deploy.prometheusrule import ALERTS, KUBERNETES_GROUPS, RULE_FILE
from tests.deploy.prometheusrule import render as render_rule
from tests.deploy.support import run, tool
from tests.deploy.test_kubernetes import K8S, OVERLAYS, find, rendered

MONITORING = K8S / "monitoring"
COMPONENT = MONITORING / "prometheus-operator"
SCRAPE_CONFIG = MONITORING / "prometheus" / "scrape-config.yml"
TOKEN_TEMPLATE = MONITORING / "scrape-token.secret.template.yaml"
SCHEMAS = Path(__file__).parent / "schemas"
CRD_FILES = {
    "ServiceMonitor": SCHEMAS / "monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": SCHEMAS / "monitoring.coreos.com_prometheusrules.yaml",
}
PROMETHEUS_PEER = {"namespace": "monitoring", "pod": {"app.kubernetes.io/name": "prometheus"}}


def namespace_of(overlay: str) -> str:
    """The namespace an overlay deploys into."""
    return str(next(d["metadata"]["namespace"] for d in rendered(overlay) if d["kind"] == "Deployment"))


def with_monitoring(overlay: str, directory: Path) -> list[dict[str, Any]]:
    """The overlay with the Operator component added, as docs/deployment.md tells an operator to add it."""
    directory.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace_of(overlay),
        "resources": [os.path.relpath(K8S / "overlays" / overlay, directory)],
        "components": [os.path.relpath(COMPONENT, directory)],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return render(directory)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay with the Operator component added, rendered once for the module (tests must not alter it)."""
    base = tmp_path_factory.mktemp("monitored")
    return {overlay: with_monitoring(overlay, base / overlay) for overlay in OVERLAYS}


def crd_schema(kind: str) -> dict[str, Any]:
    """The CRD's served version's openAPIV3Schema as a JSON Schema refusing unknown fields (except where the CRD
    preserves them), which is how the API server validates with ``--validate=strict``."""
    (crd,) = [document for document in yaml.safe_load_all(CRD_FILES[kind].read_text()) if document]
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    assert version["name"] == "v1"

    def strict(node: Any) -> Any:
        if isinstance(node, list):
            return [strict(item) for item in node]
        if not isinstance(node, dict):
            return node
        result = {key: strict(value) for key, value in node.items()}
        if isinstance(result.get("pattern"), str):
            # Go (RE2) takes flags anywhere (`^(?i)...`); Python only first: the same expression, spelt for Python.
            result["pattern"] = re.sub(r"^\^\(\?([a-zA-Z]+)\)", r"(?\1)^", result["pattern"])
        if (
            result.get("type") == "object"
            and isinstance(result.get("properties"), dict)
            and "additionalProperties" not in result
            and not result.get("x-kubernetes-preserve-unknown-fields")
        ):
            result["additionalProperties"] = False
        return result

    schema: dict[str, Any] = strict(version["schema"]["openAPIV3Schema"])
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return schema


def validate_against_crd(kind: str, objects: list[dict[str, Any]], directory: Path) -> tuple[int, str]:
    """check-jsonschema's exit status and output for ``objects`` against ``kind``'s CRD schema."""
    directory.mkdir(parents=True, exist_ok=True)
    schema = directory / f"{kind}.schema.json"
    schema.write_text(json.dumps(crd_schema(kind)))
    instances = []
    for index, document in enumerate(objects):
        instance = directory / f"{kind}-{index}.json"
        instance.write_text(json.dumps(document))
        instances.append(instance)
    # The CRDs' patterns are Go (RE2) expressions: Python's dialect reads them as Go does (see crd_schema).
    result = run(tool("check-jsonschema"), "--regex-variant", "python", "--schemafile", schema, *instances)
    return result.returncode, result.stdout + result.stderr


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether an equality selector matches a set of labels."""
    return all(labels.get(key) == value for key, value in selector.items())


def test_the_operator_objects_validate_against_the_operators_schemas(
    monitored: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """In every overlay the component adds exactly a ServiceMonitor and a PrometheusRule, in the overlay's
    namespace, and both validate against the Operator's CRDs."""
    added: dict[str, list[dict[str, Any]]] = {"ServiceMonitor": [], "PrometheusRule": []}
    for overlay, documents in monitored.items():
        new = [d for d in documents if d not in rendered(overlay)]
        assert sorted(d["kind"] for d in new) == ["PrometheusRule", "ServiceMonitor"], overlay
        for document in new:
            assert document["metadata"]["namespace"] == namespace_of(overlay), overlay
            added[document["kind"]].append(document)
    for kind, objects in added.items():
        status, output = validate_against_crd(kind, objects, tmp_path / kind)
        assert status == 0, output


def test_schema_validation_catches_a_misspelt_field_and_a_missing_key(
    monitored: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    documents = copy.deepcopy(monitored["production"])
    (monitor,) = find(documents, "ServiceMonitor")
    misspelt = json.loads(json.dumps(monitor))
    misspelt["spec"]["jobLabels"] = misspelt["spec"].pop("jobLabel")
    keyless = json.loads(json.dumps(monitor))
    del keyless["spec"]["endpoints"][0]["authorization"]["credentials"]["key"]
    for index, broken in enumerate((misspelt, keyless)):
        status, _ = validate_against_crd("ServiceMonitor", [broken], tmp_path / f"broken-{index}")
        assert status != 0
    (rule,) = find(documents, "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["alerts"] = rule["spec"]["groups"][0]["rules"][0].pop("alert")
    status, _ = validate_against_crd("PrometheusRule", [rule], tmp_path / "broken-rule")
    assert status != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_monitor_scrapes_every_api_pod_once_where_prometheus_is_admitted(
    overlay: str, monitored: dict[str, list[dict[str, Any]]]
) -> None:
    documents = monitored[overlay]
    (monitor,) = find(documents, "ServiceMonitor")
    spec = monitor["spec"]
    assert "namespaceSelector" not in spec, "the ServiceMonitor reads its Secret from its own namespace"
    services = [
        s for s in find(documents, "Service") if selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert services, "the ServiceMonitor selects no Service"
    (endpoint,) = spec["endpoints"]
    assert endpoint["path"] == "/metrics"
    for service in services:
        assert service["metadata"]["labels"][spec["jobLabel"]] == "library-api", "job must be library-api everywhere"
        ports = {port["name"]: port for port in service["spec"]["ports"]}
        assert endpoint["port"] in ports, f"{service['metadata']['name']} has no port {endpoint['port']}"
        assert ports[endpoint["port"]]["targetPort"] == "http"

    api_pods = {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in find(documents, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "api"
    }
    assert api_pods
    for name, template in api_pods.items():
        labels = template["metadata"]["labels"]
        covering = [s["metadata"]["name"] for s in services if selects(s["spec"]["selector"], labels)]
        assert len(covering) == 1, f"{name}'s pods are scraped through {covering}, not exactly one Service"
        (container,) = template["spec"]["containers"]
        assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in container["ports"]

    (policy,) = find(documents, "NetworkPolicy", "library-api-from-prometheus")
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": PROMETHEUS_PEER["namespace"]}
    assert peer["podSelector"]["matchLabels"] == PROMETHEUS_PEER["pod"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    for template in api_pods.values():
        assert selects(policy["spec"]["podSelector"]["matchLabels"], template["metadata"]["labels"])


def test_the_scrape_credential_comes_from_the_documented_secret() -> None:
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", TOKEN_TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr
    template = yaml.safe_load(TOKEN_TEMPLATE.read_text())
    assert all("<" in value and ">" in value for value in template["stringData"].values()), "placeholders only"
    text = TOKEN_TEMPLATE.read_text()
    assert "library-api tokens create --name prometheus --role monitor" in text
    monitor = yaml.safe_load((COMPONENT / "servicemonitor.yaml").read_text())
    credentials = monitor["spec"]["endpoints"][0]["authorization"]["credentials"]
    assert monitor["spec"]["endpoints"][0]["authorization"]["type"] == "Bearer"
    assert credentials["name"] == template["metadata"]["name"]
    assert credentials["key"] in template["stringData"]
    plain = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"][0]["authorization"]
    name, key = plain["credentials_file"].split("/")[-2:]
    assert (name, key) == (template["metadata"]["name"], credentials["key"])
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert not any(path.name.endswith(".template.yaml") for path in map(Path, component["resources"]))


def test_the_prometheus_rule_is_alerts_yml(tmp_path: Path) -> None:
    """The file is what tests/deploy/prometheusrule.py generates from alerts.yml, so the alerts cannot drift."""
    assert RULE_FILE.read_text() == render_rule(), "regenerate it: python -m tests.deploy.prometheusrule"
    rule = yaml.safe_load(RULE_FILE.read_text())
    groups = {group["name"]: group for group in yaml.safe_load(ALERTS.read_text())["groups"]}
    assert rule["spec"]["groups"] == [groups[name] for name in KUBERNETES_GROUPS]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = run(tool("promtool"), "check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr


def plain_config_copy(directory: Path) -> Path:
    """scrape-config.yml for Debian's promtool: its credentials file pointed at one that exists (promtool checks that
    it does) and its Kubernetes discovery replaced by a static target (see the module's docstring)."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    token = directory / "token"
    token.write_text("lib_token\n")
    job["authorization"]["credentials_file"] = str(token)
    assert job.pop("kubernetes_sd_configs")
    job["static_configs"] = [{"targets": ["10.244.0.10:8000"]}]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_plain_prometheus_scrape_config_validates_against_the_published_schema(tmp_path: Path) -> None:
    schema = SCHEMAS / "prometheus.json"
    result = run(tool("check-jsonschema"), "--schemafile", schema, SCRAPE_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(SCRAPE_CONFIG.read_text().replace("role: endpoints", "role: endpoint"))
    result = run(tool("check-jsonschema"), "--schemafile", schema, broken)
    assert result.returncode != 0
    assert "'endpoint' is not one of" in result.stdout


def test_the_plain_prometheus_scrape_job_passes_promtool(tmp_path: Path) -> None:
    result = run(tool("promtool"), "check", "config", plain_config_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    broken = tmp_path / "broken.yml"
    broken.write_text(plain_config_copy(tmp_path).read_text().replace("action: keep", "action: kept"))
    assert run(tool("promtool"), "check", "config", broken).returncode != 0


def sanitized(name: str) -> str:
    """A label name as Kubernetes service discovery writes it into a meta label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_plain_scrape_config_keeps_the_service_monitors_endpoints(
    overlay: str, monitored: dict[str, list[dict[str, Any]]]
) -> None:
    """Prometheus's ``keep`` relabelling, replayed on the meta labels of each rendered Service's endpoint ports,
    keeps exactly the ports the ServiceMonitor scrapes, in a namespace the job discovers."""
    job = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"][0]
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery["role"] == "endpoints"
    assert namespace_of(overlay) in discovery["namespaces"]["names"]
    (keep,) = [rule for rule in job["relabel_configs"] if rule.get("action") == "keep"]
    documents = monitored[overlay]
    (monitor,) = find(documents, "ServiceMonitor")
    expected = {
        (s["metadata"]["name"], monitor["spec"]["endpoints"][0]["port"])
        for s in find(documents, "Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    }
    kept = set()
    for service in find(documents, "Service"):
        for port in service["spec"]["ports"]:
            meta = {
                f"__meta_kubernetes_service_label_{sanitized(k)}": v for k, v in service["metadata"]["labels"].items()
            }
            meta["__meta_kubernetes_endpoint_port_name"] = port["name"]
            value = ";".join(meta.get(label, "") for label in keep["source_labels"])
            if re.fullmatch(keep["regex"], value):
                kept.add((service["metadata"]["name"], port["name"]))
    assert kept == expected
