"""Under Gunicorn (the image's command) forwarded headers are believed from ``TRUSTED_PROXIES`` only.

Uvicorn's Gunicorn worker believes ``X-Forwarded-For``/``-Proto`` from Gunicorn's ``forwarded_allow_ips``
(loopback by default) unless told not to; a client on the same host could then choose the address that rate
limits and allowed networks see, and the scheme that decides HSTS and redirect URLs. Real Gunicorn runs
``deploy/gunicorn.conf.py`` on a port of its own choosing (``PORT=0``, read back from its "Listening at" line);
the access line's ``client`` shows the address the application saw, and ``Strict-Transport-Security`` (sent on
HTTPS requests only) the scheme.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.processes import running
from tests.deploy.support import DEPLOY, VENV_BIN
from tests.support.polling import wait_for
from tests.support.processes import TEST_ENVIRONMENT

FORWARDED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")


@dataclass
class Gunicorn:
    """A running Gunicorn master with one worker: the port it bound and its log."""

    port: int
    log: Path

    def get(self, path: str, headers: dict[str, str]) -> tuple[httpx.Response, dict[str, Any]]:
        """The answer to a GET from 127.0.0.1, and the access line the application wrote for it."""
        request_id = f"t-{uuid.uuid4().hex}"
        response = httpx.get(f"http://127.0.0.1:{self.port}{path}", headers={**headers, "X-Request-ID": request_id})
        found: list[dict[str, Any]] = []

        def written() -> bool:
            found[:] = [r for r in self._records() if r.get("request_id") == response.headers["x-request-id"]]
            return bool(found)

        wait_for(written, 20, f"no access line for {path}")
        return response, found[0]

    def _records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


def _listening_port(log: Path) -> int | None:
    match = LISTENING.search(log.read_text()) if log.exists() else None
    return int(match.group(1)) if match else None


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def gunicorn(directory: Path, **settings: str) -> Iterator[Gunicorn]:
    """``gunicorn --config deploy/gunicorn.conf.py`` with one worker on a port it picks, until it answers."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LIBRARY_API_", "WEB_"))}
    env.update(TEST_ENVIRONMENT)
    env.update(
        HOST="127.0.0.1",
        PORT="0",
        WEB_CONCURRENCY="1",
        SHUTDOWN_TIMEOUT="5",
        LOG_FORMAT="json",
        DATABASE_URL=f"sqlite+aiosqlite:///{directory}/library.db",
        UPLOAD_DIR=str(directory / "uploads"),
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    env.pop("FORWARDED_ALLOW_IPS", None)  # Gunicorn's default (loopback) is the case under test
    env.update(settings)
    log = directory / "gunicorn.log"
    command = [str(VENV_BIN / "gunicorn"), "--config", str(DEPLOY / "gunicorn.conf.py")]
    with running(command, log=log, env=env, cwd=directory) as master:
        ports: list[int] = []

        def listening() -> bool:
            assert master.poll() is None, log.read_text()
            port = _listening_port(log)
            ports[:] = [] if port is None else [port]
            return bool(ports)

        wait_for(listening, 60, "Gunicorn did not report the port it bound")
        wait_for(lambda: _answers(ports[0]), 120, "the Gunicorn worker did not start answering")
        yield Gunicorn(ports[0], log)
        master.terminate()
        assert master.wait(timeout=30) == 0


def test_forwarded_headers_from_loopback_are_ignored_without_trusted_proxies(tmp_path: Path) -> None:
    with gunicorn(tmp_path, TRUSTED_PROXIES="") as server:
        response, access = server.get("/api/v1/auth/principal", FORWARDED)
    assert response.status_code == 200
    assert access["client"] == "127.0.0.1"  # not 203.0.113.9
    assert "strict-transport-security" not in response.headers  # the request stayed plain HTTP


def test_a_trusted_proxy_is_believed(tmp_path: Path) -> None:
    """The same request from a peer named in TRUSTED_PROXIES: the application takes the forwarded facts."""
    with gunicorn(tmp_path, TRUSTED_PROXIES="127.0.0.1") as server:
        response, access = server.get("/api/v1/auth/principal", FORWARDED)
        _, direct = server.get("/api/v1/auth/principal", {})
    assert response.status_code == 200
    assert access["client"] == "203.0.113.9"
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert direct["client"] == "127.0.0.1"
