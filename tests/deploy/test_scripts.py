"""deploy/*.sh: shellcheck-clean, clear about misuse, and the backup and restore procedure run for real
against PostgreSQL (dump, damage, restore, compare; retention)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.support import DEPLOY, run, tool
from tests.support.databases import scratch_postgres_database
from tests.support.measure import unmeasured
from tests.support.ports import refused_port
from tests.support.services import require_postgres

SCRIPTS = sorted(DEPLOY.glob("*.sh"))


def test_the_scripts_are_there_and_executable() -> None:
    assert [script.name for script in SCRIPTS] == ["backup.sh", "deploy.sh", "restore.sh"]
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_shellcheck_passes(script: Path) -> None:
    result = run(tool("shellcheck"), "--severity=style", script)
    assert result.returncode == 0, result.stdout


def test_shellcheck_catches_a_bad_script(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\nrm -rf $DIR/*\ncd $1\n")
    assert run(tool("shellcheck"), bad).returncode != 0


def script_env(**values: str) -> dict[str, str]:
    """The scripts' environment; the commands they run are measured by their own tests, not here."""
    env = {key: value for key, value in unmeasured().items() if not key.startswith(("HEALTH_", "DEPLOY_", "BACKUP_"))}
    env.update(values)
    return env


def shell(
    *command: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_deploy_without_a_command_prints_its_usage() -> None:
    result = shell(DEPLOY / "deploy.sh", "launch", env=script_env())
    assert result.returncode == 2
    assert result.stderr.strip().endswith("{check|build|migrate|test|seed|start|health|e2e|full|rollback}")


def test_deploy_health_fails_clearly_when_nothing_answers() -> None:
    port = refused_port()
    result = shell(
        DEPLOY / "deploy.sh", "health", env=script_env(HEALTH_BASE_URL=f"http://127.0.0.1:{port}", HEALTH_TIMEOUT="2")
    )
    assert result.returncode == 1
    assert "error: /health/ready did not answer 200 within 2 s" in result.stderr


def test_deploy_rollback_needs_a_previous_release(tmp_path: Path) -> None:
    """Without two recorded releases there is nothing to go back to, and nothing is touched.

    The script runs from a copy in a directory of the test's own, so its release history (``.deploy/``, beside
    the script's ``deploy/``) is the test's and not whatever this checkout has recorded.
    """
    script = tmp_path / "deploy" / "deploy.sh"
    script.parent.mkdir()
    shutil.copy2(DEPLOY / "deploy.sh", script)
    releases = tmp_path / ".deploy" / "releases"
    result = shell(script, "rollback", env=script_env(DEPLOY_TARGET="compose"))
    assert result.returncode == 1
    assert f"no release recorded in {releases.parent}/releases" in result.stderr
    releases.parent.mkdir()
    releases.write_text("library-api:1.0.0\n")
    result = shell(script, "rollback", env=script_env(DEPLOY_TARGET="compose"))
    assert result.returncode == 1
    assert "only one release recorded: nothing to go back to" in result.stderr
    assert releases.read_text() == "library-api:1.0.0\n"


def test_restore_refuses_without_confirmation(tmp_path: Path) -> None:
    dump = tmp_path / "library.dump"
    dump.write_bytes(b"not used")
    result = shell(DEPLOY / "restore.sh", dump, env=script_env(DATABASE_URL="postgresql://nowhere/none"))
    assert result.returncode == 1
    assert "run again with --yes to confirm" in result.stderr


@pytest.fixture
def database() -> Iterator[str]:
    require_postgres()
    tool("psql")
    with scratch_postgres_database("backup") as url:
        yield url


def psql(url: str, sql: str) -> str:
    result = shell("psql", url.replace("+asyncpg", ""), "-Atqc", sql)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_backup_and_restore_round_trip_on_the_real_schema(database: str, tmp_path: Path) -> None:
    migrated = shell(
        DEPLOY.parent / ".venv" / "bin" / "library-api",
        "migrate",
        env=script_env(DATABASE_URL=database),
        cwd=tmp_path,
    )
    assert migrated.returncode == 0, migrated.stderr
    psql(
        database,
        "INSERT INTO books (isbn, title, authors, tags, copies, search_text) "
        "VALUES ('9780306406157', 'Kept', '[]', '[]', 2, 'kept')",
    )
    uploads = tmp_path / "uploads" / "covers"
    uploads.mkdir(parents=True)
    (uploads / "cover.png").write_bytes(b"png")
    backups = tmp_path / "backups"
    backups.mkdir()
    stale = backups / "library-20000101T000000Z.dump"
    stale.write_bytes(b"old")
    old = time.time() - 30 * 86400
    os.utime(stale, (old, old))

    env = script_env(
        DATABASE_URL=database, BACKUP_DIR=str(backups), BACKUP_RETENTION_DAYS="14", UPLOAD_DIR=str(tmp_path / "uploads")
    )
    backup = shell(DEPLOY / "backup.sh", env=env)
    assert backup.returncode == 0, backup.stderr
    dumps = sorted(backups.glob("library-*.dump"))
    assert len(dumps) == 1, "the dump older than the retention was not removed"
    assert "removed (older than retention)" in backup.stdout
    assert (backups / dumps[0].name.replace("library-", "uploads-").replace(".dump", ".tar.gz")).exists()
    assert oct(backups.stat().st_mode & 0o777) == "0o700"

    psql(database, "DELETE FROM books; DROP TABLE bookings CASCADE")
    restored = shell(DEPLOY / "restore.sh", "--yes", dumps[0], env=env)
    assert restored.returncode == 0, restored.stderr
    assert psql(database, "SELECT title FROM books") == "Kept"
    assert psql(database, "SELECT count(*) FROM bookings") == "0"
    assert psql(database, "SELECT version_num FROM alembic_version") != ""
