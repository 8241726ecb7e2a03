"""The command line, in process (CliRunner) and as a real process where exit codes and ports matter."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from library_api.cli import app
from tests.support.databases import DatabaseTemplate
from tests.support.ports import refused_port
from tests.support.processes import TEST_ENVIRONMENT
from tests.support.services import port_open

pytestmark = pytest.mark.children_unmeasured

runner = CliRunner()


def invoke(args: list[str], env: dict[str, str], input_text: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, args, env={**TEST_ENVIRONMENT, **env}, input=input_text)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run commands in an empty directory with none of the service's variables set."""
    for key in list(os.environ):
        if key in {"DATABASE_URL", "SECRET_KEY", "ENVIRONMENT", "CONFIG_FILE", "LIBRARY_API_OVERRIDES"}:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_check_config_prints_masked_values(clean_env: Path) -> None:
    code, out, _ = invoke(["check-config"], {"SECRET_KEY": "super-secret-value", "PORT": "9001"})
    assert code == 0
    assert "PORT=9001" in out.splitlines()
    assert "super-secret-value" not in out and "SECRET_KEY=********" in out
    code, out, _ = invoke(["check-config", "--json"], {})
    assert code == 0 and json.loads(out)["HOST"] == "127.0.0.1"


def test_check_config_reports_every_problem_and_exits_2(clean_env: Path) -> None:
    code, out, err = invoke(["check-config"], {"ENVIRONMENT": "production", "PORT": "-1"})
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines)
    # the invalid port, the default secret, the test suite's deliberately cheap password hashing, any host, plain HTTP
    assert [line.split(":")[1].strip() for line in lines] == [
        "PORT",
        "SECRET_KEY",
        "PASSWORD_HASH_MEMORY_KIB/PASSWORD_HASH_TIME_COST",
        "ALLOWED_HOSTS",
        "SECURITY_MODE",
    ]


def test_config_file_and_env_file_options(clean_env: Path) -> None:
    (clean_env / "app.yaml").write_text("port: 7001\n")
    (clean_env / "custom.env").write_text("HOST=127.0.0.2\n")
    code, out, _ = invoke(["--config", "app.yaml", "--env-file", "custom.env", "check-config"], {})
    assert code == 0
    assert "PORT=7001" in out and "HOST=127.0.0.2" in out


def test_production_without_secret_stops_before_opening_a_port(clean_env: Path) -> None:
    port = refused_port()
    env = {**os.environ, "ENVIRONMENT": "production", "ALLOW_HTTP_BEHIND_PROXY": "true", "ALLOWED_HOSTS": "localhost"}
    env.pop("SECRET_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "library_api", "serve", "--port", str(port)],
        cwd=clean_env,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: SECRET_KEY: must be set to a unique secret in production (the default or an example is in use)"
    ]
    assert not port_open("127.0.0.1", port)


def test_migrate_seed_and_users(db_template: DatabaseTemplate, tmp_path: Path, clean_env: Path) -> None:
    url = asyncio.run(db_template.clone(tmp_path))
    try:
        env = {"DATABASE_URL": url}
        code, out, err = invoke(["migrate"], env)
        assert code == 0, err
        assert "revision 0001" in out or "revision 0" in out

        code, out, err = invoke(["seed"], env)
        assert code == 0, err
        added = int(out.split()[1])
        assert added >= 200
        code, out, _ = invoke(["seed"], env)
        assert out.startswith("added 0 of")  # idempotent

        code, out, err = invoke(
            ["users", "create", "--email", "Boss@Example.org", "--role", "admin"],
            env,
            "pw-for-the-boss\npw-for-the-boss\n",
        )
        assert code == 0, err
        assert "created admin boss@example.org" in out
        code, _, err = invoke(["users", "create", "--email", "boss@example.org", "--password", "another-pass"], env)
        assert code == 1 and "already exists" in err
        code, _, err = invoke(
            ["users", "create", "--email", "x@example.org", "--password", "pw-123456", "--role", "monitor"], env
        )
        assert code == 1 and "--role must be one of" in err
        code, _, err = invoke(["users", "create", "--email", "not-an-email", "--password", "pw-123456"], env)
        assert code == 1 and "--email" in err
    finally:
        asyncio.run(db_template.drop_clone(url))


def test_seed_reports_a_bad_catalogue_file(clean_env: Path) -> None:
    bad = clean_env / "bad.json"
    bad.write_text(json.dumps([{"isbn": "123", "title": "x", "authors": ["a"]}]))
    code, _, err = invoke(["seed", "--file", str(bad)], {"DATABASE_URL": f"sqlite+aiosqlite:///{clean_env}/x.db"})
    assert code == 1
    assert err.startswith("error: book 0.isbn:")


def test_migrate_reports_an_unreachable_database(clean_env: Path) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{refused_port()}/nothing"
    code, _, err = invoke(["migrate"], {"DATABASE_URL": url})
    assert code == 1 and err.startswith("error: migration failed:")


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "migrate", "seed", "users", "check-config"):
        assert command in result.stdout
