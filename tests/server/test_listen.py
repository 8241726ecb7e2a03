"""A port that cannot be bound stops ``serve`` with one readable line and the start-up failure status."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import TEST_ENVIRONMENT


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_and_exit_status_3(tmp_path: Path, workers: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {**os.environ, **TEST_ENVIRONMENT, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/library.db"}
        env.pop("LIBRARY_API_OVERRIDES", None)
        command = [sys.executable, "-m", "library_api", "serve", "--host", "127.0.0.1", "--port", str(port)]
        done = subprocess.run(
            [*command, "--workers", workers],
            check=False,
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
