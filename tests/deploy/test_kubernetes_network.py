"""The network boundary of the Kubernetes kit, on what the real kustomize renders for the base and every overlay.

Who may connect to the pods (NetworkPolicies), whose forwarded headers the service believes (``TRUSTED_PROXIES``,
``FORWARDED_CERT_PROXIES``), that only the mTLS overlay believes forwarded client certificates and there from an
ingress that verified them against the CA the service verifies them with too, and that production names its hosts.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tests.deploy.test_kubernetes import OVERLAYS, find, rendered

API_COMPONENT = {"app.kubernetes.io/name": "library-api", "app.kubernetes.io/component": "api"}

Selector = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]
"""A peer of a NetworkPolicy rule: its namespace selector's and its pod selector's labels, sorted."""

CONTROLLER: Selector = (
    (("kubernetes.io/metadata.name", "ingress-nginx"),),
    (("app.kubernetes.io/component", "controller"), ("app.kubernetes.io/name", "ingress-nginx")),
)
PROMETHEUS: Selector = (
    (("kubernetes.io/metadata.name", "monitoring"),),
    (("app.kubernetes.io/name", "prometheus"),),
)
WIDEST_IPV4_PREFIX = 16
"""No trusted IPv4 range may be wider than a /16 (10.0.0.0/8 and 172.16.0.0/12 trusted every pod of most clusters)."""
WIDEST_IPV6_PREFIX = 48

MTLS_ANNOTATIONS = {
    "nginx.ingress.kubernetes.io/auth-tls-verify-client": "on",
    "nginx.ingress.kubernetes.io/auth-tls-verify-depth": "1",
    "nginx.ingress.kubernetes.io/auth-tls-pass-certificate-to-upstream": "true",
}
AUTH_TLS_SECRET = "nginx.ingress.kubernetes.io/auth-tls-secret"


def match_labels(selector: dict[str, Any]) -> dict[str, str]:
    """A label selector's labels; selectors this check cannot evaluate exactly are refused, never guessed."""
    assert set(selector) <= {"matchLabels"}, f"selector not understood by this check: {selector}"
    return dict(selector.get("matchLabels") or {})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy's podSelector selects a pod with ``labels`` ({} selects every pod)."""
    return all(labels.get(key) == value for key, value in match_labels(selector).items())


def pod_templates(documents: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod template of the rendered workloads, with the workload's name."""
    templates = []
    for document in documents:
        spec = document.get("spec", {})
        if document["kind"] == "CronJob":
            templates.append((document["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]))
        elif document["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            templates.append((document["metadata"]["name"], spec["template"]))
    return templates


def api_pods(documents: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The API's pod templates (every track and slot)."""
    pods = [
        (name, pod) for name, pod in pod_templates(documents) if selects({"matchLabels": API_COMPONENT}, labels(pod))
    ]
    assert pods, "no API pods rendered"
    return pods


def labels(template: dict[str, Any]) -> dict[str, str]:
    """A pod template's labels."""
    return dict(template["metadata"].get("labels") or {})


def policies_for(documents: list[dict[str, Any]], template: dict[str, Any]) -> list[dict[str, Any]]:
    """The NetworkPolicies restricting connections to pods of ``template``."""
    return [
        policy
        for policy in find(documents, "NetworkPolicy")
        if "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        and selects(policy["spec"]["podSelector"], labels(template))
    ]


def peer(entry: dict[str, Any]) -> Selector:
    """One ``from`` entry as a comparable selector pair; address blocks and lone selectors are refused."""
    assert set(entry) == {"namespaceSelector", "podSelector"}, (
        f"every peer must name a namespace and pods in it (an ipBlock or a lone selector admits too much): {entry}"
    )
    namespace = match_labels(entry["namespaceSelector"])
    pods = match_labels(entry["podSelector"])
    assert namespace, f"an empty namespaceSelector admits every namespace: {entry}"
    assert pods, f"an empty podSelector admits every pod of the namespace: {entry}"
    return tuple(sorted(namespace.items())), tuple(sorted(pods.items()))


def container_port(template: dict[str, Any], port: int | str) -> int:
    """The number of a container port of the pod, given by number or by name."""
    for container in template["spec"]["containers"]:
        for declared in container.get("ports", []):
            if port in (declared["containerPort"], declared.get("name")):
                return int(declared["containerPort"])
    raise AssertionError(f"the pod declares no port {port!r}")


def admitted(documents: list[dict[str, Any]], template: dict[str, Any]) -> dict[Selector, set[int]]:
    """Every peer any policy lets connect to pods of ``template``, with the ports it may reach."""
    peers: dict[Selector, set[int]] = {}
    for policy in policies_for(documents, template):
        for rule in policy["spec"].get("ingress", []):
            name = policy["metadata"]["name"]
            assert rule.get("from"), f"{name}: a rule without `from` admits every peer"
            assert rule.get("ports"), f"{name}: a rule without `ports` admits every port"
            ports = {container_port(template, port["port"]) for port in rule["ports"]}
            assert all(port.get("protocol", "TCP") == "TCP" for port in rule["ports"])
            for entry in rule["from"]:
                peers.setdefault(peer(entry), set()).update(ports)
    return peers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_namespace_denies_every_connection_by_default(overlay: str) -> None:
    documents = rendered(overlay)
    deny = [
        policy
        for policy in find(documents, "NetworkPolicy")
        if policy["spec"]["podSelector"] == {}
        and "Ingress" in policy["spec"]["policyTypes"]
        and not policy["spec"].get("ingress")
    ]
    assert deny, f"{overlay}: no default-deny policy for the namespace"
    namespaces = {policy["metadata"].get("namespace") for policy in find(documents, "NetworkPolicy")}
    deployments = {document["metadata"].get("namespace") for document in find(documents, "Deployment")}
    assert namespaces == deployments, f"{overlay}: the policies are not in the namespace of the workloads"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_pods_admit_only_the_ingress_controller_and_prometheus(overlay: str) -> None:
    documents = rendered(overlay)
    for name, template in api_pods(documents):
        peers = admitted(documents, template)
        assert set(peers) == {CONTROLLER, PROMETHEUS}, f"{overlay}/{name}: admitted peers {sorted(peers)}"
        http = container_port(template, "http")
        assert peers[CONTROLLER] == {http}, f"{overlay}/{name}: the controller must reach the HTTP port only"
        metrics_port = int(template["metadata"]["annotations"]["prometheus.io/port"])
        assert peers[PROMETHEUS] == {metrics_port}, f"{overlay}/{name}: Prometheus must reach the metrics port only"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobs_admit_no_connection(overlay: str) -> None:
    documents = rendered(overlay)
    others = [
        (name, pod) for name, pod in pod_templates(documents) if labels(pod).get("app.kubernetes.io/component") != "api"
    ]
    assert {labels(pod)["app.kubernetes.io/component"] for _, pod in others} == {"migrate", "backup"}
    for name, template in others:
        assert policies_for(documents, template), f"{overlay}/{name}: no policy restricts connections to it"
        assert admitted(documents, template) == {}, f"{overlay}/{name}: admits connections"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_kit_runs_no_database_or_redis_in_the_cluster(overlay: str) -> None:
    """PostgreSQL and Redis are the operator's (DATABASE_URL, REDIS_URL): restricting them is theirs to do.

    Should the kit ever run them, this fails: give them NetworkPolicies admitting only the API pods and the
    migrate and backup jobs, and a test for those. (The backup job runs the postgres image as a client.)
    """
    servers = [
        document["metadata"]["name"]
        for document in rendered(overlay)
        if document["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}
        for container in document["spec"]["template"]["spec"]["containers"]
        if container["image"].rsplit("/", 1)[-1].startswith(("postgres", "redis"))
    ]
    assert servers == []


def config(documents: list[dict[str, Any]]) -> dict[str, str]:
    """The service's ConfigMap."""
    return dict(find(documents, "ConfigMap", "library-api-config")[0]["data"])


def container_env(documents: list[dict[str, Any]], key: str) -> dict[str, str]:
    """``key`` as each container sets it in its own ``env``, by workload/container."""
    found = {}
    for name, template in pod_templates(documents):
        for container in template["spec"]["containers"]:
            for variable in container.get("env", []):
                if variable["name"] == key:
                    found[f"{name}/{container['name']}"] = str(variable.get("value", ""))
    return found


def networks(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A comma-separated list of addresses and networks, as the service reads it."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()]


def too_wide(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether a trusted range is wider than the kit allows."""
    widest = WIDEST_IPV4_PREFIX if network.version == 4 else WIDEST_IPV6_PREFIX
    return network.prefixlen < widest


def test_the_width_check_refuses_the_ranges_that_used_to_be_trusted() -> None:
    assert all(too_wide(network) for network in networks("10.0.0.0/8,172.16.0.0/12,0.0.0.0/0,::/0"))
    assert not any(too_wide(network) for network in networks("10.244.0.0/16,172.30.250.10,fd00:1:2::/48"))


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_trusted_ranges_are_narrow(overlay: str) -> None:
    documents = rendered(overlay)
    values = {
        f"ConfigMap {key}": config(documents).get(key, "") for key in ("TRUSTED_PROXIES", "FORWARDED_CERT_PROXIES")
    }
    for key in ("TRUSTED_PROXIES", "FORWARDED_CERT_PROXIES"):
        values.update({f"{where} {key}": value for where, value in container_env(documents, key).items()})
    wide = {where: value for where, value in values.items() if any(too_wide(n) for n in networks(value))}
    assert not wide, f"{overlay}: trusted ranges wider than /{WIDEST_IPV4_PREFIX}: {wide}"


def test_the_base_trusts_no_proxy() -> None:
    assert networks(config(rendered("base"))["TRUSTED_PROXIES"]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_names_the_controllers_range(overlay: str) -> None:
    """Behind ingress-nginx the client's address arrives forwarded: each overlay names whom to believe it from."""
    assert networks(config(rendered(overlay))["TRUSTED_PROXIES"])


@pytest.mark.parametrize("overlay", [overlay for overlay in OVERLAYS if overlay != "mtls"])
def test_default_overlays_believe_no_forwarded_certificate(overlay: str) -> None:
    documents = rendered(overlay)
    assert not networks(config(documents).get("FORWARDED_CERT_PROXIES", ""))
    assert container_env(documents, "FORWARDED_CERT_PROXIES") == {}
    for document in find(documents, "ConfigMap") + find(documents, "Secret"):
        assert "FORWARDED_CERT_PROXIES" not in (document.get("data") or {}), document["metadata"]["name"]


def test_the_mtls_overlay_believes_certificates_only_from_a_verifying_ingress() -> None:
    documents = rendered("mtls")
    namespace = find(documents, "Deployment", "library-api")[0]["metadata"]["namespace"]
    secrets = set()
    ingresses = find(documents, "Ingress")
    assert {ingress["metadata"]["name"] for ingress in ingresses} == {"library-api", "library-api-websocket"}
    for ingress in ingresses:
        annotations = ingress["metadata"]["annotations"]
        for key, value in MTLS_ANNOTATIONS.items():
            assert annotations.get(key) == value, f"{ingress['metadata']['name']}: {key} must be {value!r}"
        secret_namespace, _, secret = annotations[AUTH_TLS_SECRET].partition("/")
        assert secret_namespace == namespace, "the CA Secret must be the one in the service's namespace"
        secrets.add(secret)
    assert len(secrets) == 1, f"every Ingress must verify against the same CA: {secrets}"
    (ca_secret,) = secrets

    assert not networks(config(documents).get("FORWARDED_CERT_PROXIES", "")), "set on the API container only"
    for name, template in api_pods(documents):
        pod = template["spec"]
        (container,) = pod["containers"]
        env = {variable["name"]: variable.get("value", "") for variable in container.get("env", [])}
        assert networks(env.get("FORWARDED_CERT_PROXIES", "")), f"{name}: FORWARDED_CERT_PROXIES is not set"
        ca_file = env.get("TLS_CA_FILE", "")
        mounts = [m for m in container["volumeMounts"] if ca_file.startswith(m["mountPath"].rstrip("/") + "/")]
        assert len(mounts) == 1, f"{name}: TLS_CA_FILE={ca_file!r} is not in a mounted volume"
        assert mounts[0].get("readOnly") is True
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
        assert volume["secret"]["secretName"] == ca_secret, "the service must verify against the ingress's CA"
        assert ca_file.rsplit("/", 1)[-1] == "ca.crt", "ingress-nginx reads the CA from the Secret's key ca.crt"
    others = {
        where: value
        for where, value in container_env(documents, "FORWARDED_CERT_PROXIES").items()
        if not where.startswith("library-api/")
    }
    assert others == {}, f"only the API container believes forwarded certificates: {others}"


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_production_names_the_hosts_it_answers_to(overlay: str) -> None:
    """Production refuses ALLOWED_HOSTS=* at start; the hosts must also include every Ingress host, or the
    service would refuse its own traffic."""
    documents = rendered(overlay)
    settings = config(documents)
    assert settings["ENVIRONMENT"] == "production"
    hosts = [host.strip() for host in settings.get("ALLOWED_HOSTS", "").split(",") if host.strip()]
    assert hosts, f"{overlay}: ALLOWED_HOSTS is not set"
    assert "*" not in hosts, f"{overlay}: ALLOWED_HOSTS allows every host"
    for ingress in find(documents, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            host = rule["host"]
            allowed = host in hosts or any(h.startswith("*.") and host.endswith(h[1:]) for h in hosts)
            assert allowed, f"{overlay}: the Ingress host {host} is not in ALLOWED_HOSTS {hosts}"
