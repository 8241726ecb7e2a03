"""Kubernetes manifests: the base and every overlay rendered by the real kustomize, validated strictly against the
API schemas, and checked for the properties a graceful, secure rollout depends on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from library_api.config import Settings
from tests.deploy.kustomize import KustomizeError, render
from tests.deploy.support import DEPLOY, run, tool

K8S = DEPLOY / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())
KUBERNETES_VERSIONS = ["1.37.0", "1.31.0"]
GUNICORN_MARGIN = 30


def rendered(overlay: str) -> list[dict[str, Any]]:
    """The objects an overlay renders to (``base`` renders the base itself)."""
    return render(K8S / "base" if overlay == "base" else K8S / "overlays" / overlay)


def find(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The rendered objects of one kind (and name)."""
    return [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def test_the_overlays_exist() -> None:
    assert OVERLAYS == ["blue-green", "canary", "mtls", "production", "staging"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_rendered_overlay_validates_strictly(overlay: str, version: str, tmp_path: Path) -> None:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(rendered(overlay)))
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, manifest)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_secret_template_validates_and_holds_no_value(tmp_path: Path) -> None:
    template = K8S / "base" / "shared" / "secret.template.yaml"
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", template)
    assert result.returncode == 0, result.stdout + result.stderr
    values = yaml.safe_load(template.read_text())["stringData"].values()
    assert all("<" in value and ">" in value for value in values), "the template must hold placeholders only"
    kustomization = yaml.safe_load((K8S / "base" / "shared" / "kustomization.yaml").read_text())
    assert "secret.template.yaml" not in kustomization["resources"]
    assert not any(d["kind"] == "Secret" for overlay in OVERLAYS for d in rendered(overlay))


def test_strict_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    documents = rendered("production")
    find(documents, "Deployment", "library-api")[0]["spec"]["template"]["spec"]["terminationGracePeriod"] = 5
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    assert run(tool("kubernetes-validate"), "--strict", "--quiet", manifest).returncode != 0


def test_kustomize_errors_are_reported(tmp_path: Path) -> None:
    """The renderer is kustomize itself: a kustomization it refuses is an error, never an empty rendering."""
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(KustomizeError, match=r"missing\.yaml"):
        render(tmp_path)


def shutdown_timeout(documents: list[dict[str, Any]]) -> float:
    config = find(documents, "ConfigMap", "library-api-config")[0]["data"]
    return float(config.get("SHUTDOWN_TIMEOUT", Settings().shutdown_timeout))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_api_deployment_drains_gracefully(overlay: str) -> None:
    documents = rendered(overlay)
    deployments = [d for d in find(documents, "Deployment") if d["metadata"]["name"].startswith("library-api")]
    assert deployments
    drain = math.ceil(shutdown_timeout(documents))
    for deployment in deployments:
        spec = deployment["spec"]
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        pod = spec["template"]["spec"]
        container = pod["containers"][0]
        pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + GUNICORN_MARGIN + 5, (
            f"{overlay}/{deployment['metadata']['name']}: the grace period does not cover preStop + drain"
        )
        assert container["startupProbe"]["httpGet"]["path"] == "/health/startup"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_on_a_read_only_root(overlay: str) -> None:
    for document in rendered(overlay):
        if document["kind"] == "CronJob":
            pod = document["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif document["kind"] in {"Deployment", "Job"}:
            pod = document["spec"]["template"]["spec"]
        else:
            continue
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"requests", "limits"} <= set(container["resources"])
            mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{document['metadata']['name']}: no writable /tmp"
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], image
            assert not image.endswith(":latest"), image


def test_metrics_directory_is_an_in_memory_volume() -> None:
    deployment = find(rendered("production"), "Deployment", "library-api")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[env["PROMETHEUS_MULTIPROC_DIR"]])
    assert volume["emptyDir"]["medium"] == "Memory"
    assert mounts["/app/uploads"] == "uploads"


def test_production_scales_and_keeps_replicas_through_disruptions() -> None:
    documents = rendered("production")
    assert find(documents, "Deployment", "library-api")[0]["spec"]["replicas"] == 3
    hpa = find(documents, "HorizontalPodAutoscaler", "library-api")[0]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "library-api"
    assert {m["resource"]["name"] for m in hpa["metrics"]} == {"cpu", "memory"}
    assert hpa["minReplicas"] >= 3
    pdb = find(documents, "PodDisruptionBudget", "library-api")[0]["spec"]
    assert pdb["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_websocket_ingress_outlasts_the_drain(overlay: str) -> None:
    documents = rendered(overlay)
    websocket = find(documents, "Ingress", "library-api-websocket")[0]
    timeout = int(websocket["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert timeout > shutdown_timeout(documents)
    assert websocket["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/ws/"
    assert websocket["spec"]["tls"], "TLS is required"


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(documents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in find(documents, "Deployment")}


def test_blue_green_routes_all_traffic_to_one_slot() -> None:
    documents = rendered("blue-green")
    pods = pod_labels(documents)
    assert set(pods) == {"library-api-blue", "library-api-green"}
    live = find(documents, "Service", "library-api")[0]["spec"]["selector"]
    preview = find(documents, "Service", "library-api-preview")[0]["spec"]["selector"]
    assert [name for name, labels in pods.items() if selects(live, labels)] == ["library-api-blue"]
    assert [name for name, labels in pods.items() if selects(preview, labels)] == ["library-api-green"]
    hpa = find(documents, "HorizontalPodAutoscaler", "library-api")[0]["spec"]["scaleTargetRef"]
    assert hpa["name"] == "library-api-blue"
    for deployment in find(documents, "Deployment"):
        assert selects(
            deployment["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
        )


def test_canary_takes_traffic_only_through_the_canary_ingress() -> None:
    documents = rendered("canary")
    pods = pod_labels(documents)
    stable = find(documents, "Service", "library-api")[0]["spec"]["selector"]
    canary = find(documents, "Service", "library-api-canary")[0]["spec"]["selector"]
    assert [name for name, labels in pods.items() if selects(stable, labels)] == ["library-api"]
    assert [name for name, labels in pods.items() if selects(canary, labels)] == ["library-api-canary"]
    assert find(documents, "Deployment", "library-api-canary")[0]["spec"]["replicas"] == 1
    ingress = find(documents, "Ingress", "library-api-canary")[0]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary"] == "true"
    main_host = find(documents, "Ingress", "library-api")[0]["spec"]["rules"][0]["host"]
    assert ingress["spec"]["rules"][0]["host"] == main_host
    images = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in find(documents, "Deployment")
    }
    assert images["library-api"] != images["library-api-canary"]


def test_the_backup_job_script_passes_shellcheck(tmp_path: Path) -> None:
    cronjob = find(rendered("production"), "CronJob", "library-api-backup")[0]
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    script = tmp_path / "backup.sh"
    script.write_text("#!/bin/sh\n" + container["args"][0])
    result = run(tool("shellcheck"), "--shell=sh", script)
    assert result.returncode == 0, result.stdout
    assert "pg_dump --format=custom" in container["args"][0]
    assert "-mtime" in container["args"][0]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
