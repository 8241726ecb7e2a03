"""Every key a deployment file sets is a real setting of the service, and every setting is documented.

A deployment file that sets a misspelt or retired key fails silently in production (the service ignores
unknown keys); these tests make it fail here instead, naming the file and the key.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from library_api.config import ConfigError, load_settings
from tests.deploy.kustomize import render
from tests.deploy.support import DEPLOY, INFRASTRUCTURE_KEYS, ROOT, check_key, load_yaml, settings_keys

ENV_EXAMPLE = ROOT / ".env.production.example"
_ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)


def example_keys() -> set[str]:
    """Keys the example sets or shows commented out with their default."""
    return set(_ASSIGNMENT.findall(ENV_EXAMPLE.read_text()))


def compose_environment_keys() -> dict[str, set[str]]:
    """The environment of every Compose service that runs the service's image (api, migrate)."""
    keys: dict[str, set[str]] = {}
    ours = {name for name, body in load_yaml(ROOT / "compose.yaml")["services"].items() if "build" in body}
    assert ours == {"api", "migrate"}
    for name in ("compose.yaml", "compose.dev.yaml", "compose.mtls.yaml"):
        for service, body in load_yaml(ROOT / name)["services"].items():
            if service not in ours:
                continue
            environment = body.get("environment", {})
            if isinstance(environment, list):
                environment = dict(item.split("=", 1) for item in environment)
            keys[f"{name}: {service}"] = set(environment)
    return keys


def kubernetes_environment_keys() -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    overlays = sorted((DEPLOY / "k8s" / "overlays").iterdir())
    for overlay in overlays:
        for document in render(overlay):
            where = f"{overlay.name}: {document['kind']}/{document['metadata']['name']}"
            if document["kind"] == "ConfigMap" and document["metadata"]["name"] == "library-api-config":
                keys[where] = set(document["data"])
            if document["kind"] in {"Deployment", "Job"}:
                containers = document["spec"]["template"]["spec"]["containers"]
                keys[where] = {variable["name"] for c in containers for variable in c.get("env", [])}
    template = load_yaml(DEPLOY / "k8s" / "base" / "shared" / "secret.template.yaml")
    keys["secret.template.yaml"] = set(template["stringData"])
    return keys


def test_every_key_of_the_production_example_is_a_setting_or_documented_infrastructure() -> None:
    problems = [problem for key in sorted(example_keys()) if (problem := check_key(key))]
    assert not problems, "\n".join(problems)


def test_the_production_example_lists_every_setting() -> None:
    missing = settings_keys() - example_keys()
    assert not missing, f"add these settings to .env.production.example (set or commented): {sorted(missing)}"


def test_the_production_example_loads_and_refuses_only_its_placeholder_secret(tmp_path: Path) -> None:
    """The real loader reads the example: every value has the right type and range; only SECRET_KEY is a stub."""
    with pytest.raises(ConfigError) as refused:
        load_settings(env={}, env_file=ENV_EXAMPLE)
    assert refused.value.problems == [
        "SECRET_KEY: must be set to a unique secret in production (the default or an example is in use)"
    ]
    filled = tmp_path / ".env"
    filled.write_text(ENV_EXAMPLE.read_text().replace("SECRET_KEY=change-me", "SECRET_KEY=" + "k" * 48))
    settings = load_settings(env={}, env_file=filled)
    assert settings.is_production
    assert settings.effective_log_format == "json"
    assert settings.auto_migrate is False
    assert settings.backend_cors_origins == ["https://library.example.com", "https://admin.library.example.com"]
    # Production refuses `*`: the example names its hosts, and believes no forwarded certificate.
    assert settings.allowed_hosts == ["library.example.com"]
    assert not any(line.startswith("FORWARDED_CERT_PROXIES=") for line in ENV_EXAMPLE.read_text().splitlines())


@pytest.mark.parametrize("source", ["compose", "kubernetes"])
def test_every_environment_key_in_compose_and_kubernetes_is_known(source: str) -> None:
    found = compose_environment_keys() if source == "compose" else kubernetes_environment_keys()
    assert found, "no environment found: the parser no longer matches the files"
    problems = [
        f"{where}: {problem}" for where, keys in found.items() for key in sorted(keys) if (problem := check_key(key))
    ]
    assert not problems, "\n".join(problems)


def test_every_key_gunicorn_conf_reads_is_documented() -> None:
    source = (DEPLOY / "gunicorn.conf.py").read_text()
    source += (ROOT / "src" / "library_api" / "server" / "gunicorn_settings.py").read_text()
    read = set(re.findall(r'(?:\.integer|\.number|environ\.get)\(\s*"([A-Z][A-Z0-9_]*)"', source))
    assert {"WEB_CONCURRENCY", "WORKERS_PER_CORE", "GRACEFUL_TIMEOUT", "MAX_REQUESTS"} <= read
    undocumented = read - set(INFRASTRUCTURE_KEYS)
    assert not undocumented, f"document these in tests/deploy/support.py INFRASTRUCTURE_KEYS: {undocumented}"
    assert read <= example_keys(), f"list these in .env.production.example: {sorted(read - example_keys())}"


def test_the_check_rejects_an_unknown_key() -> None:
    """The consistency check itself is not a rubber stamp."""
    assert check_key("DATABASE_URL") is None
    assert check_key("WEB_CONCURRENCY") is None
    problem = check_key("DATABSE_URL")
    assert problem is not None
    assert "not a setting" in problem
