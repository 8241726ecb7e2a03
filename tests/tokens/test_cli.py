"""``library-api tokens create|list|revoke``, checked against a running application (once as a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from library_api.app import create_app
from tests.conftest import fast_settings
from tests.support.cli import SETTING_PREFIXES, invoke
from tests.support.factories import bearer
from tests.support.processes import TEST_ENVIRONMENT

pytestmark = pytest.mark.children_unmeasured

CLI = Path(sys.executable).with_name("library-api")


def run(database_url: str, directory: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The command run in this process, with the environment a deployment would give it."""
    return invoke(["--env-file", str(directory / "none.env"), "tokens", *arguments], settings(database_url))


def settings(database_url: str) -> dict[str, str]:
    return {**TEST_ENVIRONMENT, "DATABASE_URL": database_url}


def run_process(database_url: str, directory: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The real ``library-api`` executable, with the same environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    environment.update(settings(database_url))
    return subprocess.run(
        [str(CLI), "--env-file", str(directory / "none.env"), "tokens", *arguments],
        env=environment,
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_create_list_revoke(committed_url: str, tmp_path: Path) -> None:
    created = run(committed_url, tmp_path, "create", "--name", "prometheus", "--role", "monitor", "--role", "admin")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("lib_") and "\n" not in token
    assert "shown only this once" in created.stderr and token not in created.stderr

    listed = run_process(committed_url, tmp_path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert [(e["name"], e["roles"], e["revoked_at"]) for e in entries] == [("prometheus", ["monitor", "admin"], None)]
    assert token not in listed.stdout and token.startswith(entries[0]["prefix"])
    table = run(committed_url, tmp_path, "list")
    assert "prometheus" in table.stdout and "active" in table.stdout and token not in table.stdout

    app = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path, principal_cache_ttl=0))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get("/api/v1/tokens", headers=bearer(token))).status_code == 200
            revoked = run(committed_url, tmp_path, "revoke", str(entries[0]["id"]))
            assert revoked.returncode == 0, revoked.stderr
            assert f"revoked API token {entries[0]['id']} (prometheus)" in revoked.stdout
            assert (await client.get("/api/v1/tokens", headers=bearer(token))).status_code == 401
    assert "revoked" in run(committed_url, tmp_path, "list").stdout


def test_bad_input_is_reported_and_changes_nothing(committed_url: str, tmp_path: Path) -> None:
    unknown = run(committed_url, tmp_path, "create", "--name", "x", "--role", "superuser")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.startswith("error: Unknown role(s) superuser")
    blank = run(committed_url, tmp_path, "create", "--name", " ", "--role", "monitor")
    assert blank.returncode == 2 and "error: --name must be 1 to 100 characters" in blank.stderr
    missing = run(committed_url, tmp_path, "revoke", "4242")
    assert missing.returncode == 1 and "error: No API token with id 4242." in missing.stderr
    assert json.loads(run(committed_url, tmp_path, "list", "--json").stdout) == []
