"""Compose files: valid against the Compose specification, pinned, ordered by health, consistent with the rest."""

from __future__ import annotations

import math
import re

import pytest

from library_api.config import Settings
from tests.deploy.support import DEPLOY, ROOT, load_yaml, run, tool

COMPOSE_FILES = ["compose.yaml", "compose.dev.yaml"]


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
    for name in ("prometheus", "grafana"):
        assert all(str(port).startswith("127.0.0.1:") for port in services[name]["ports"]), name
    for name in ("api", "db", "redis", "migrate"):
        assert "ports" not in services[name], f"{name} must not publish a port"
    assert compose["networks"]["internal"] == {"internal": True}
    assert services["db"]["networks"] == ["internal"]
    assert services["redis"]["networks"] == ["internal"]


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
