"""Several processes without Redis: every worker warns that its WebSocket clients see only its own events.

Every way of running several processes is tried as a real server: ``serve --workers 2`` under Uvicorn,
Hypercorn and Gunicorn, and the image's command (``gunicorn --config deploy/gunicorn.conf.py``) with
``WEB_CONCURRENCY=2``. One worker gives no warning: its log up to "startup complete" is the sentinel.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.test_gunicorn_forwarded import gunicorn
from tests.support.polling import wait_for
from tests.support.processes import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.children_unmeasured]

WARNING = "2 workers without REDIS_URL: each worker's WebSocket clients see only the events of that worker"
NO_REDIS: dict[str, str] = {}  # the test environment names no REDIS_URL


@pytest.mark.parametrize(
    "args",
    [("--workers", "2"), ("--server", "hypercorn", "--workers", "2"), ("--server", "gunicorn", "--workers", "2")],
    ids=["uvicorn", "hypercorn", "gunicorn"],
)
def test_serve_with_two_workers_warns_in_each(tmp_path: Path, args: tuple[str, ...]) -> None:
    server = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/library.db", directory=tmp_path, args=args, env=NO_REDIS
    ).launch()
    try:
        server.wait_ready()
        wait_for(lambda: server.log_text().count(WARNING) == 2, 60, "the warning of both workers", interval=0.1)
    finally:
        assert server.stop() == 0


def test_the_image_command_warns_under_web_concurrency(tmp_path: Path) -> None:
    with gunicorn(tmp_path, WEB_CONCURRENCY="2", **NO_REDIS) as server:
        wait_for(lambda: server.log.read_text().count(WARNING) == 2, 60, "the warning of both workers", interval=0.1)


def test_one_worker_does_not_warn(tmp_path: Path) -> None:
    server = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/library.db", directory=tmp_path, env=NO_REDIS
    ).launch()
    try:
        server.wait_ready()
        assert "start-up complete" in server.log_text()
        assert "without REDIS_URL" not in server.log_text()
    finally:
        assert server.stop() == 0
