"""Compose files: valid against the Compose specification, pinned, ordered by health, consistent with the rest."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

import pytest

from library_api.config import Settings
from tests.deploy.support import DEPLOY, ROOT, load_yaml, run, tool

COMPOSE_FILES = ["compose.yaml", "compose.dev.yaml", "compose.mtls.yaml"]
_DEFAULT = re.compile(r"^\$\{([A-Z_]+):-([^}]*)\}(.*)$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(ROOT / "compose.yaml")


def test_compose_files_validate_against_the_compose_specification() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *COMPOSE_FILES, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_catches_a_broken_compose_file(tmp_path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        "services:\n"
        "  api:\n"
        "    image: x:1\n"
        "    depends_on: {db: {condition: when_ready}}\n"
        "    stop_grace_periode: 10s\n"
    )
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", broken)
    assert result.returncode != 0


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_no_version_key_and_no_latest_or_untagged_image(name: str) -> None:
    document = load_yaml(ROOT / name)
    assert "version" not in document
    for service, body in document["services"].items():
        image = body.get("image")
        if image is None:
            continue
        reference = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", image)
        assert ":" in reference.rsplit("/", 1)[-1], f"{service}: image {image} has no tag"
        assert not reference.endswith(":latest"), f"{service}: image {image} uses latest"


def test_services_and_their_start_order(compose: dict) -> None:
    services = compose["services"]
    assert {"api", "migrate", "db", "redis", "nginx", "prometheus", "grafana", "loki", "promtail"} <= set(services)
    assert {"alertmanager", "node-exporter", "postgres-exporter", "redis-exporter"} <= set(services)
    assert services["api"]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "db": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert services["migrate"]["command"] == ["library-api", "migrate"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"
    for name in ("db", "redis", "nginx"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    assert services["api"]["healthcheck"]["test"] == ["CMD", "python", "/app/healthcheck.py"]
    assert "--appendonly" in services["redis"]["command"][-1]
    assert "--requirepass" in services["redis"]["command"][-1]
    assert services["loki"]["profiles"] == ["production"]
    assert services["promtail"]["profiles"] == ["production"]
    for name in ("api", "migrate"):
        assert services[name]["env_file"] == [{"path": ".env", "required": True}]


def test_only_nginx_is_public_and_the_data_stays_internal(compose: dict) -> None:
    services = compose["services"]
    assert services["nginx"]["ports"] == ["80:80", "443:443"]
    for name in ("prometheus", "grafana", "alertmanager"):
        assert all(str(port).startswith("127.0.0.1:") for port in services[name]["ports"]), name
    for name in ("api", "db", "redis", "migrate", *EXPORTERS):
        assert "ports" not in services[name], f"{name} must not publish a port"
    assert compose["networks"]["internal"] == {"internal": True}
    assert services["db"]["networks"] == ["internal"]
    assert services["redis"]["networks"] == ["internal"]


EXPORTERS = ("node-exporter", "postgres-exporter", "redis-exporter")


def test_the_exporters_stay_on_the_internal_network_and_read_only(compose: dict) -> None:
    """No exporter shares a network with nginx or the outside; Alertmanager's way out is its own network."""
    services = compose["services"]
    for name in EXPORTERS:
        body = services[name]
        assert body["networks"] == ["internal"], name
        assert body["read_only"] is True, name
        assert body["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in body["security_opt"], name
    node = services["node-exporter"]
    assert node["volumes"] == ["/:/host:ro,rslave"]
    assert "--path.rootfs=/host" in node["command"]
    assert services["postgres-exporter"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert services["redis-exporter"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    # The exporters log in with the credentials the database and Redis containers are given.
    postgres = services["postgres-exporter"]["environment"]
    db = services["db"]["environment"]
    assert postgres["DATA_SOURCE_USER"] == db["POSTGRES_USER"]
    assert postgres["DATA_SOURCE_PASS"] == db["POSTGRES_PASSWORD"]
    assert postgres["DATA_SOURCE_URI"] == "db:5432/" + db["POSTGRES_DB"] + "?sslmode=disable"
    assert services["redis-exporter"]["environment"] == {
        "REDIS_ADDR": "redis://redis:6379",
        "REDIS_PASSWORD": services["redis"]["environment"]["REDIS_PASSWORD"],
    }
    alertmanager = services["alertmanager"]
    assert alertmanager["networks"] == ["internal", "alerting"]
    attached = [name for name, body in services.items() if "alerting" in body.get("networks", [])]
    assert attached == ["alertmanager"], "only Alertmanager goes out through the alerting network"
    assert compose["networks"]["alerting"] in ({}, None)
    assert "--maxmemory" in services["redis"]["command"][-1], "LibraryApiRedisMemoryHigh needs a maxmemory"


def test_the_api_container_is_locked_down(compose: dict) -> None:
    api = compose["services"]["api"]
    assert api["read_only"] is True
    assert api["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in api["security_opt"]
    assert api["environment"]["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/prometheus"
    assert any(entry.startswith("/tmp:") for entry in api["tmpfs"])


def test_stop_grace_period_outlasts_the_drain(compose: dict) -> None:
    """`docker compose stop` must not SIGKILL a worker still draining WebSockets (Gunicorn: drain + 30 s)."""
    grace = int(compose["services"]["api"]["stop_grace_period"].removesuffix("s"))
    drain = math.ceil(Settings().shutdown_timeout)
    assert grace > drain + 30


def test_every_mounted_file_exists_and_is_the_validated_one(compose: dict) -> None:
    for service, body in compose["services"].items():
        for volume in body.get("volumes", []):
            source = volume.split(":")[0]
            # Paths an operator provides (certificates, backups) are interpolated; the repository's are not.
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{service} mounts {source}, which does not exist"
    nginx_mounts = {
        re.sub(r"\$\{[A-Z_]+:-[^}]+\}", "OPERATOR", volume).split(":")[1]
        for volume in compose["services"]["nginx"]["volumes"]
    }
    assert {
        "/etc/nginx/nginx.conf",
        "/etc/nginx/library-api.conf",
        "/etc/nginx/snippets",
        "/etc/nginx/mtls.d",
        "/etc/nginx/certs",
        "/srv/library/uploads",
        "/var/www/acme",
    } == nginx_mounts, "nginx's mounts must match the paths deploy/nginx refers to"
    servers = (DEPLOY / "nginx" / "library-api.conf").read_text()
    assert "root /srv/library;" in servers
    assert "root /var/www/acme;" in servers
    assert "include mtls.d/*.conf;" in servers
    assert "ssl_certificate certs/fullchain.pem;" in servers
    prometheus = compose["services"]["prometheus"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert prometheus["secrets"] == ["prometheus_scrape_token"]
    scrape = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"][0]
    assert scrape["authorization"]["credentials_file"] == "/run/secrets/prometheus_scrape_token"


def test_the_development_override_reloads_mounted_source() -> None:
    dev = load_yaml(ROOT / "compose.dev.yaml")["services"]["api"]
    assert "--reload" in dev["command"]
    assert "./src:/app/src:ro" in dev["volumes"]
    assert dev["environment"]["PYTHONPATH"] == "/app/src"
    assert dev["environment"]["ENVIRONMENT"] == "development"


# ----- the network boundary: whose forwarded headers the API believes -----


def nginx_address(compose: dict[str, Any]) -> ipaddress.IPv4Address:
    """nginx's fixed address, on the one network it is attached to."""
    networks = compose["services"]["nginx"]["networks"]
    assert isinstance(networks, dict) and len(networks) == 1, "nginx must sit on exactly one network"
    (settings,) = networks.values()
    return ipaddress.IPv4Address(settings["ipv4_address"])


def single_address(value: str) -> ipaddress.IPv4Address:
    """A trusted-peer setting that must name exactly one host address."""
    parts = [part.strip() for part in value.split(",") if part.strip()]
    assert len(parts) == 1, f"{value!r} must name one address, not a list"
    network = ipaddress.ip_network(parts[0], strict=False)
    assert network.num_addresses == 1, f"{value!r} must be one address, not a range"
    return ipaddress.IPv4Address(network.network_address)


def test_the_api_believes_forwarded_headers_from_nginx_alone(compose: dict) -> None:
    services = compose["services"]
    address = nginx_address(compose)
    (network,) = services["nginx"]["networks"]
    (pool,) = compose["networks"][network]["ipam"]["config"]
    subnet = ipaddress.ip_network(pool["subnet"])
    dynamic = ipaddress.ip_network(pool["ip_range"])
    assert address in subnet, f"nginx's {address} is outside its network's subnet {subnet}"
    assert dynamic.subnet_of(subnet)
    assert address not in dynamic, "Docker could hand nginx's address to another container first"
    # nginx reaches the API over that network alone, so every request it forwards comes from its address.
    assert set(services["nginx"]["networks"]) & set(services["api"]["networks"]) == {network}
    assert "server api:8000;" in (DEPLOY / "nginx" / "nginx.conf").read_text()
    for name in ("api", "migrate"):
        assert single_address(services[name]["environment"]["TRUSTED_PROXIES"]) == address, name


@pytest.mark.parametrize("name", ["compose.yaml", "compose.dev.yaml"])
def test_without_the_mtls_file_no_forwarded_certificate_is_believed(name: str) -> None:
    for service, body in load_yaml(ROOT / name)["services"].items():
        assert "FORWARDED_CERT_PROXIES" not in (body.get("environment") or {}), f"{name}: {service}"


def test_the_mtls_variant_believes_certificates_nginx_verified_from_nginx_alone(compose: dict) -> None:
    variant = load_yaml(ROOT / "compose.mtls.yaml")
    api = variant["services"]["api"]
    assert set(variant["services"]) == {"api", "nginx"}, "the migrate job has no use for certificates"
    assert single_address(api["environment"]["FORWARDED_CERT_PROXIES"]) == nginx_address(compose)
    # The API verifies against the very file nginx verifies with: certs/client-ca.pem in nginx's certificates.
    ca_file = api["environment"]["TLS_CA_FILE"]
    secret = ca_file.removeprefix("/run/secrets/")
    assert secret in api["secrets"]
    certs_mount = next(v for v in compose["services"]["nginx"]["volumes"] if v.split(":")[-2] == "/etc/nginx/certs")
    certs_source = certs_mount.rsplit(":", 2)[0]
    assert variant["secrets"][secret]["file"] == f"{certs_source}/client-ca.pem"
    snippet = (DEPLOY / "nginx" / "snippets" / "client-certificate.conf").read_text()
    assert "ssl_client_certificate certs/client-ca.pem;" in snippet
    # nginx's side: the mount replaces compose.yaml's empty mtls.d (same target) with the one turning it on.
    (mount,) = variant["services"]["nginx"]["volumes"]
    source, target, mode = mount.split(":")
    assert (target, mode) == ("/etc/nginx/mtls.d", "ro")
    assert any(v.split(":")[1] == target for v in compose["services"]["nginx"]["volumes"])
    enabled = sorted((ROOT / source).glob("*.conf"))
    assert [path.read_text().count("include snippets/client-certificate.conf;") for path in enabled] == [1]
    assert not list((DEPLOY / "nginx" / "mtls.d").glob("*.conf")), "compose.yaml alone must not verify certificates"


def test_production_names_the_hosts_it_answers_to(compose: dict) -> None:
    environment = compose["services"]["api"]["environment"]
    assert environment["ENVIRONMENT"] == "production"
    match = _DEFAULT.match(environment["ALLOWED_HOSTS"])
    assert match is not None, "ALLOWED_HOSTS must come from .env with a default"
    variable, default, rest = match.groups()
    assert (variable, rest) == ("ALLOWED_HOSTS", "")
    hosts = [host.strip() for host in default.split(",") if host.strip()]
    assert hosts and "*" not in hosts
