"""Production names the hosts it answers to: ``ALLOWED_HOSTS=*`` stops start-up, a foreign ``Host`` gets a 400.

With ``*`` every ``Host`` header is taken at its word and reflected into the absolute URLs of redirects (a
trailing-slash redirect answers ``Location: http://<Host>/...``): behind a shared cache that is cache poisoning
and an open redirect. The live server runs in production mode on loopback, as an operator would start it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from library_api.config import ConfigError, load_settings
from tests.conftest import AppFactory
from tests.support.http import client_for
from tests.support.ports import refused_port
from tests.support.processes import ServerProcess
from tests.support.services import port_open

pytestmark = pytest.mark.children_unmeasured

PRODUCTION = {
    "ENVIRONMENT": "production",
    "SECRET_KEY": "p" * 48,
    "ALLOW_HTTP_BEHIND_PROXY": "true",
    "PASSWORD_HASH_MEMORY_KIB": "19456",
    "PASSWORD_HASH_TIME_COST": "2",
}
HOSTS_PROBLEM = (
    "ALLOWED_HOSTS: production needs the host names clients use (e.g. ALLOWED_HOSTS=library.example.com); "
    "'*' answers any Host header and reflects it into redirects"
)


@pytest.mark.parametrize("hosts", [None, "*", "library.example.org,*"])
def test_production_refuses_any_host_in_one_line(hosts: str | None) -> None:
    env = PRODUCTION if hosts is None else {**PRODUCTION, "ALLOWED_HOSTS": hosts}
    with pytest.raises(ConfigError) as refused:
        load_settings(env=env, env_file=None)
    assert refused.value.problems == [HOSTS_PROBLEM]


def test_production_accepts_named_hosts_and_development_keeps_its_default() -> None:
    named = load_settings(
        env={**PRODUCTION, "ALLOWED_HOSTS": "library.example.org,*.library.example.org"}, env_file=None
    )
    assert named.allowed_hosts == ["library.example.org", "*.library.example.org"]
    assert load_settings(env={}, env_file=None).allowed_hosts == ["*"]


async def test_any_host_is_what_reflects_a_foreign_host_into_redirects(app_factory: AppFactory) -> None:
    """Why production refuses ``*``: the redirect's absolute URL carries whatever ``Host`` the client sent."""
    app = await app_factory(allowed_hosts=["*"])
    async with client_for(app) as http:
        redirected = await http.get("/api/v1/books/", headers={"Host": "evil.example"})
    assert redirected.status_code == 307
    assert redirected.headers["location"] == "http://evil.example/api/v1/books"


@pytest.mark.e2e
async def test_a_production_server_refuses_a_foreign_host_instead_of_redirecting_to_it(tmp_path: Path) -> None:
    env = {**PRODUCTION, "ALLOWED_HOSTS": "library.example.org"}
    server = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/hosts.db", directory=tmp_path, env=env
    ).launch()
    try:
        await asyncio.to_thread(server.wait_ready)  # probes answer any host (orchestrators use the pod's address)
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            foreign = await http.get("/api/v1/books/", headers={"Host": "evil.example"})
            named = await http.get("/api/v1/books/", headers={"Host": "library.example.org"})
    finally:
        await asyncio.to_thread(server.stop)
    assert foreign.status_code == 400
    assert "location" not in foreign.headers
    assert foreign.headers["content-type"] == "application/problem+json"
    assert foreign.json()["type"] == "urn:library-api:problem:invalid-host"
    assert named.status_code == 307
    assert named.headers["location"] == "http://library.example.org/api/v1/books"


@pytest.mark.e2e
def test_a_production_server_with_any_host_stops_before_opening_a_port(tmp_path: Path) -> None:
    port = refused_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LIBRARY_API_", "ALLOWED_"))}
    env.update(PRODUCTION, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/hosts.db")
    result = subprocess.run(
        [sys.executable, "-m", "library_api", "--env-file", str(tmp_path / "none.env"), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {HOSTS_PROBLEM}"]
    assert not port_open("127.0.0.1", port)
