"""Render the kustomize overlays under ``deploy/k8s`` without kubectl, for offline validation.

It implements exactly the part of kustomize the repository's kustomizations use, and refuses any other field
so that a new feature cannot be silently ignored: ``resources`` (files and directories, recursively),
``namespace``, ``nameSuffix``, ``labels`` (``pairs`` with ``includeSelectors``), ``images``, ``replicas`` and
``patches`` (strategic merge or JSON 6902, with an optional ``target``). Where ``kubectl kustomize`` is
installed, ``tests/deploy/test_kubernetes.py`` checks that both render the same objects.

Run it by hand: ``python -m tests.deploy.kustomize deploy/k8s/overlays/production``.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_FIELDS = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "nameSuffix", "labels", "images", "replicas", "patches"}
)

CLUSTER_SCOPED_KINDS = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume", "StorageClass"}
)

WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})

# Strategic-merge keys of the list fields the patches touch (as in the Kubernetes API's patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


class KustomizeError(Exception):
    """A kustomization this renderer cannot render faithfully."""


@dataclass
class Resource:
    """One object being rendered, with the names it has had (patches and references match any of them)."""

    body: dict[str, Any]
    names: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def known_as(self, name: str) -> bool:
        return name == self.name or name in self.names


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects the kustomization in ``directory`` produces."""
    return [resource.body for resource in _build(directory.resolve())]


def _build(directory: Path) -> list[Resource]:
    kustomization_file = directory / "kustomization.yaml"
    if not kustomization_file.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(kustomization_file.read_text()) or {}
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kustomization_file}: fields this renderer does not implement: {sorted(unknown)}")

    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.extend(_build(path))
        else:
            if directory not in path.parents:
                raise KustomizeError(f"{kustomization_file}: file {entry} is outside the kustomization root")
            resources.extend(Resource(copy.deepcopy(doc)) for doc in yaml.safe_load_all(path.read_text()) if doc)

    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, resources)
    if "namespace" in spec:
        for resource in resources:
            if resource.kind not in CLUSTER_SCOPED_KINDS:
                resource.body["metadata"]["namespace"] = spec["namespace"]
    if "nameSuffix" in spec:
        _rename(resources, spec["nameSuffix"])
    for label_set in spec.get("labels", []):
        _add_labels(resources, label_set)
    for replicas in spec.get("replicas", []):
        for resource in resources:
            if resource.kind in WORKLOAD_KINDS and resource.known_as(replicas["name"]):
                resource.body["spec"]["replicas"] = replicas["count"]
    for image in spec.get("images", []):
        _set_image(resources, image)
    return resources


def _apply_patch(directory: Path, patch: dict[str, Any], resources: list[Resource]) -> None:
    document = yaml.safe_load((directory / patch["path"]).read_text())
    target = patch.get("target", {})
    if isinstance(document, list):
        if not target:
            raise KustomizeError(f"{patch['path']}: a JSON 6902 patch needs a target")
        matched = [r for r in resources if _matches(r, target)]
        for resource in matched:
            for operation in document:
                _json6902(resource.body, operation)
    else:
        selector = target or {"kind": document["kind"], "name": document["metadata"]["name"]}
        matched = [r for r in resources if _matches(r, selector)]
        for resource in matched:
            resource.body = _merge(resource.body, document)
    if not matched:
        raise KustomizeError(f"{patch['path']}: the patch matches no resource")


def _matches(resource: Resource, target: dict[str, Any]) -> bool:
    if "kind" in target and resource.kind != target["kind"]:
        return False
    return "name" not in target or resource.known_as(target["name"])


def _merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """Strategic merge: maps merge, lists with a known merge key merge by it, anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for name, value in patch.items():
            merged[name] = _merge(base[name], value, name) if name in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        merged_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            for index, existing in enumerate(merged_list):
                if existing.get(merge_key) == item.get(merge_key):
                    merged_list[index] = _merge(existing, item)
                    break
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _json6902(body: dict[str, Any], operation: dict[str, Any]) -> None:
    parts = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].lstrip("/").split("/")]
    parent: Any = body
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    op = operation["op"]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[index]
        else:
            raise KustomizeError(f"JSON 6902 operation {op!r} is not implemented")
        return
    if op in {"add", "replace"}:
        if op == "replace" and last not in parent:
            raise KustomizeError(f"replace of a missing path {operation['path']}")
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del parent[last]
    else:
        raise KustomizeError(f"JSON 6902 operation {op!r} is not implemented")


def _rename(resources: list[Resource], suffix: str) -> None:
    renamed: dict[tuple[str, str], str] = {}
    for resource in resources:
        if resource.kind == "Namespace":
            continue
        old = resource.name
        resource.names.append(old)
        resource.body["metadata"]["name"] = old + suffix
        renamed[(resource.kind, old)] = old + suffix
    for resource in resources:
        _update_references(resource.body, renamed)


def _update_references(body: dict[str, Any], renamed: dict[tuple[str, str], str]) -> None:
    """Point references at renamed objects of the same build (the reference kinds the manifests use)."""

    def new_name(kind: str, name: str) -> str:
        return renamed.get((kind, name), name)

    if body["kind"] == "HorizontalPodAutoscaler":
        ref = body["spec"]["scaleTargetRef"]
        ref["name"] = new_name(ref["kind"], ref["name"])
    if body["kind"] == "Ingress":
        for rule in body["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                service = path["backend"]["service"]
                service["name"] = new_name("Service", service["name"])
    for pod in _pod_specs(body):
        if "serviceAccountName" in pod:
            pod["serviceAccountName"] = new_name("ServiceAccount", pod["serviceAccountName"])
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]
                claim["claimName"] = new_name("PersistentVolumeClaim", claim["claimName"])
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            for source in container.get("envFrom", []):
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in source:
                        source[key]["name"] = new_name(kind, source[key]["name"])


def _pod_specs(body: dict[str, Any]) -> list[dict[str, Any]]:
    spec = body.get("spec", {})
    if body["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if "template" in spec and "spec" in spec["template"]:
        return [spec["template"]["spec"]]
    return []


def _add_labels(resources: list[Resource], label_set: dict[str, Any]) -> None:
    pairs = dict(label_set["pairs"])
    selectors = bool(label_set.get("includeSelectors", False))
    for resource in resources:
        body = resource.body
        body["metadata"].setdefault("labels", {}).update(pairs)
        if not selectors:
            continue
        spec = body.get("spec", {})
        if resource.kind == "Service":
            spec.setdefault("selector", {}).update(pairs)
        elif resource.kind in WORKLOAD_KINDS:
            spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)
            template = spec.setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
            for constraint in template.get("spec", {}).get("topologySpreadConstraints", []):
                if "labelSelector" in constraint:
                    constraint["labelSelector"].setdefault("matchLabels", {}).update(pairs)
        elif resource.kind == "PodDisruptionBudget":
            spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)
        elif resource.kind not in {"ConfigMap", "Secret", "ServiceAccount", "Namespace"}:
            raise KustomizeError(f"labels with includeSelectors on a {resource.kind} are not implemented")


def _set_image(resources: list[Resource], image: dict[str, Any]) -> None:
    for resource in resources:
        for pod in _pod_specs(resource.body):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                name, tag = _split_image(container["image"])
                if name != image["name"]:
                    continue
                new_name = image.get("newName", name)
                new_tag = image.get("newTag", tag)
                container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def _split_image(reference: str) -> tuple[str, str | None]:
    last = reference.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = reference.rpartition(":")
        return name, tag
    return reference, None


if __name__ == "__main__":
    sys.stdout.write(yaml.safe_dump_all(render(Path(sys.argv[1])), sort_keys=False))
