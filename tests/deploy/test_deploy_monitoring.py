"""``deploy/deploy.sh`` and the monitoring files it looks after with Compose: the Alertmanager configuration
written from ``ALERTMANAGER_WEBHOOK_URL``, and Prometheus's scrape token created after the stack starts.

The Compose CLI cannot run here (no Docker engine): a stand-in ``docker`` records the calls and runs the
containers' commands for real (tests/deploy/compose_shim.py), so the token comes from the service's own
``library-api tokens create`` on a real (SQLite) database. The files are checked for what Prometheus and
Alertmanager, running as ``nobody`` behind a bind mount, need: content, mode, and the same inode throughout.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.compose_shim import (
    compose_command,
    deploy_checkout,
    docker_calls,
    install_docker_shim,
    shim_environment,
)
from tests.deploy.support import VENV_BIN, run, tool

pytestmark = pytest.mark.children_unmeasured

TOKEN_COMMAND = ["library-api", "tokens", "create", "--name", "prometheus", "--role", "monitor"]
WEBHOOK_URL = "https://hooks.example.net/alerts/library?token=s3cr3t&team=ops"
SECRETS = {
    "SECRET_KEY": "k" * 48,
    "POSTGRES_PASSWORD": "database-password",
    "REDIS_PASSWORD": "redis-password",
    "GRAFANA_ADMIN_PASSWORD": "grafana-password",
    "ALLOWED_HOSTS": "library.example.com",
}


@dataclass
class Checkout:
    """A scratch checkout with deploy.sh, the stand-in docker and an environment to run them in."""

    root: Path
    script: Path
    log: Path
    env: dict[str, str]

    @property
    def token_file(self) -> Path:
        """Prometheus's scrape token, as deploy.sh writes it."""
        return self.root / "deploy" / "prometheus" / "scrape-token"

    @property
    def alertmanager_config(self) -> Path:
        """The Alertmanager configuration deploy.sh writes from alertmanager.yml and .env."""
        return self.root / "deploy" / "alertmanager" / "alertmanager.generated.yml"

    def deploy(self, *arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the checkout's deploy.sh (from its root, as an operator does)."""
        return subprocess.run(
            [str(self.script), *arguments],
            env={**self.env, **env},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def compose_calls(self) -> list[list[str]]:
        """The Compose subcommands deploy.sh ran, in order."""
        return [command for call in docker_calls(self.log) if (command := compose_command(call))]


def make_checkout(tmp_path: Path, **env_values: str) -> Checkout:
    """A scratch checkout whose .env holds ``env_values`` over the example's, on a SQLite database of its own."""
    root = tmp_path / "checkout"
    script = deploy_checkout(root, {**SECRETS, **env_values})
    install_docker_shim(tmp_path / "bin")
    log = tmp_path / "docker-calls.jsonl"
    env = shim_environment(
        tmp_path / "bin",
        log,
        tmp_path / "container",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'library.db'}",
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    return Checkout(root, script, log, env)


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    """A scratch checkout ready to deploy, alerts going to :data:`WEBHOOK_URL`."""
    return make_checkout(tmp_path, ALERTMANAGER_WEBHOOK_URL=WEBHOOK_URL)


def mode(path: Path) -> int:
    """A file's permission bits."""
    return path.stat().st_mode & 0o777


def test_check_writes_the_alertmanager_configuration_and_an_empty_token_file(checkout: Checkout) -> None:
    result = checkout.deploy("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert checkout.token_file.read_text() == ""
    config = checkout.alertmanager_config.read_text()
    assert f'url: "{WEBHOOK_URL}"' in config
    assert "example.invalid" not in config
    amtool = run(tool("amtool"), "check-config", checkout.alertmanager_config)
    assert amtool.returncode == 0, amtool.stdout + amtool.stderr
    # Prometheus and Alertmanager run as nobody: readable by all, inside directories closed to the host's others.
    for path in (checkout.token_file, checkout.alertmanager_config):
        assert mode(path) == 0o644, path
        assert mode(path.parent) == 0o750, path.parent


def test_check_refuses_to_deploy_without_a_place_for_alerts(tmp_path: Path) -> None:
    checkout = make_checkout(tmp_path)  # the example's ALERTMANAGER_WEBHOOK_URL=change-me
    result = checkout.deploy("check")
    assert result.returncode == 1
    assert "error: ALERTMANAGER_WEBHOOK_URL: set it in .env" in result.stderr
    assert not checkout.alertmanager_config.exists()


def test_start_creates_the_scrape_token_once_with_the_services_cli(checkout: Checkout) -> None:
    """``full``'s sequence: check, migrate, start. The token is made in the api container after the stack is up,
    written into the very file Prometheus has mounted (same inode), and a second start changes nothing."""
    assert checkout.deploy("check").returncode == 0
    inode = checkout.token_file.stat().st_ino
    migrated = checkout.deploy("migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    started = checkout.deploy("start")
    assert started.returncode == 0, started.stdout + started.stderr

    token = checkout.token_file.read_text()
    assert token.startswith("lib_") and token.endswith("\n") and len(token.split()) == 1
    assert checkout.token_file.stat().st_ino == inode, "the mounted file was replaced instead of written"
    assert mode(checkout.token_file) == 0o644
    calls = checkout.compose_calls()
    up = next(i for i, call in enumerate(calls) if call[0] == "up")
    create = calls.index(["exec", "-T", "api", *TOKEN_COMMAND])
    assert up < create, "the token must be created once the stack (and its migrated database) is up"
    # The configuration written by check is new to Alertmanager: it is told to read it, once.
    assert calls[create + 1 :] == [["kill", "-s", "SIGHUP", "alertmanager"]]

    # The token is a real one, for Prometheus, with the monitor role.
    listed = subprocess.run(
        [str(VENV_BIN / "library-api"), "tokens", "list", "--json"],
        env=checkout.env,
        cwd=checkout.env["DOCKER_SHIM_WORKDIR"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"name": "prometheus"' in listed.stdout
    assert '"monitor"' in listed.stdout

    again = checkout.deploy("start")
    assert again.returncode == 0, again.stdout + again.stderr
    assert checkout.token_file.read_text() == token
    later = checkout.compose_calls()[len(calls) :]
    assert [call[0] for call in later] == ["up"], f"a second start must only bring the stack up: {later}"


def test_a_token_file_from_an_older_deploy_keeps_its_token_and_becomes_readable(checkout: Checkout) -> None:
    checkout.token_file.parent.mkdir(parents=True, exist_ok=True)
    checkout.token_file.write_text("lib_existing\n")
    checkout.token_file.chmod(0o600)
    result = checkout.deploy("start")
    assert result.returncode == 0, result.stdout + result.stderr
    assert checkout.token_file.read_text() == "lib_existing\n"
    assert mode(checkout.token_file) == 0o644
    assert not any(call[:1] == ["exec"] for call in checkout.compose_calls())


def test_start_fails_clearly_when_the_token_cannot_be_created(checkout: Checkout) -> None:
    """The database was never migrated: the service's CLI refuses, deploy.sh says what to run, the file stays empty."""
    result = checkout.deploy("start")
    assert result.returncode == 1
    assert "error: could not create the scrape token" in result.stderr
    assert checkout.token_file.read_text() == ""


def test_a_changed_webhook_url_is_written_in_place_and_alertmanager_reloads(checkout: Checkout) -> None:
    checkout.token_file.parent.mkdir(parents=True, exist_ok=True)
    checkout.token_file.write_text("lib_existing\n")
    assert checkout.deploy("start").returncode == 0
    inode = checkout.alertmanager_config.stat().st_ino
    before = len(checkout.compose_calls())
    env_file = checkout.root / ".env"
    env_file.write_text(env_file.read_text().replace(WEBHOOK_URL, "http://relay.internal:8080/hook"))
    result = checkout.deploy("start")
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'url: "http://relay.internal:8080/hook"' in checkout.alertmanager_config.read_text()
    assert checkout.alertmanager_config.stat().st_ino == inode
    assert [call[0] for call in checkout.compose_calls()[before:]] == ["up", "kill"]
    assert checkout.compose_calls()[-1] == ["kill", "-s", "SIGHUP", "alertmanager"]
