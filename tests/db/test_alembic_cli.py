"""The plain ``alembic`` command works on the service's own settings (for writing new migrations)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from library_api.db.migrate import head_revision

ROOT = Path(__file__).resolve().parents[2]


def test_alembic_upgrade_and_current_use_database_url(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/dev.db"}
    command = [str(Path(sys.executable).with_name("alembic")), "-c", str(ROOT / "alembic.ini")]
    upgrade = subprocess.run(
        [*command, "upgrade", "head"], env=env, capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert upgrade.returncode == 0, upgrade.stderr
    current = subprocess.run([*command, "current"], env=env, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert f"{head_revision()} (head)" in current.stdout
