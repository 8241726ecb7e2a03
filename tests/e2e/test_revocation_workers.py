"""Revocation reaches every worker: ``library-api serve --workers 2`` on PostgreSQL.

Each worker answers from its own copy of the account and API-token state (no database round trip per request),
so the test pins one keep-alive connection to each worker process (``tests/e2e/pinning.py``), fills both
workers' caches, changes the state through the API, and then polls both connections until each answers 401,
every answer before that being a 200. How long a worker may go on answering from its copy,
``PRINCIPAL_CACHE_TTL``, is checked where a clock can be moved rather than read (``tests/security/test_accounts.py``
and ``tests/cache/test_local.py``); the wait here is only bounded so that a worker that never learns of the
change fails the test instead of hanging it.

The same server also answers forged and foreign JWTs with 401 over real HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.pinning import one_connection, pinned_workers
from tests.support.databases import empty_postgres_database
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess, migrated_server
from tests.support.services import POSTGRES_ADMIN_DSN, POSTGRES_HOST, POSTGRES_PORT, require_postgres

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.xdist_group("revocation-workers"),
    pytest.mark.children_unmeasured,
]

SECRET_KEY = f"revocation-secret-{uuid.uuid4().hex}{uuid.uuid4().hex}"
PASSWORD = "correct-horse-battery"
CACHE_TTL = 1.0
WITHIN = 60.0
"""Only a bound on the wait (a worker that never learns of the change must fail the test, not hang it)."""


@pytest.fixture(scope="module")
async def database_name() -> AsyncIterator[str]:
    require_postgres()
    async with empty_postgres_database("library_revoke") as name:
        yield name


@pytest.fixture(scope="module")
async def server(database_name: str) -> AsyncIterator[ServerProcess]:
    env = {
        **TEST_ENVIRONMENT,
        "DATABASE_URL": f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{database_name}",
        "SECRET_KEY": SECRET_KEY,
        "PRINCIPAL_CACHE_TTL": str(CACHE_TTL),
        "ACCESS_LOG": "false",
    }
    async with migrated_server(env, workers=2) as live:
        yield live


@pytest.fixture
async def workers(server: ServerProcess) -> AsyncIterator[dict[int, httpx.AsyncClient]]:
    """One keep-alive connection per worker process, keyed by the worker's pid."""
    async with pinned_workers(lambda: one_connection(server.base_url, timeout=10), 2) as pinned:
        yield pinned


async def register(http: httpx.AsyncClient) -> tuple[int, str]:
    """A new reader account and its access token."""
    email = f"reader-{uuid.uuid4().hex[:10]}@example.org"
    created = await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "full_name": "R"})
    assert created.status_code == 201, created.text
    login = await http.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return int(created.json()["id"]), str(login.json()["access_token"])


async def admin_headers(http: httpx.AsyncClient, database_name: str) -> dict[str, str]:
    """An administrator: registered as a reader, promoted in the database (as an operator would with the CLI)."""
    user_id, _ = await register(http)
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database_name}")
    try:
        await connection.execute("UPDATE users SET role = 'admin' WHERE id = $1", user_id)
        email = await connection.fetchval("SELECT email FROM users WHERE id = $1", user_id)
    finally:
        await connection.close()
    login = await http.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def assert_revoked_everywhere(
    workers: dict[int, httpx.AsyncClient], path: str, headers: dict[str, str], change: Callable[[], Awaitable[None]]
) -> None:
    """Warm every worker, make the change, and poll each worker until it answers 401 (and then only 401)."""
    for pid, http in workers.items():
        warm = await http.get(path, headers=headers)
        assert warm.status_code == 200, (pid, warm.text)
    await change()
    deadline = time.monotonic() + WITHIN
    pending = set(workers)
    while pending:
        assert time.monotonic() < deadline, f"workers {sorted(pending)} still honour the credential"
        for pid in sorted(pending):
            response = await workers[pid].get(path, headers=headers)
            if response.status_code == 401:
                pending.discard(pid)
            else:
                assert response.status_code == 200, response.text
    for pid, http in workers.items():  # once refused, refused for good
        assert (await http.get(path, headers=headers)).status_code == 401, pid


async def test_deactivation_role_change_logout_all_and_token_revocation_reach_every_worker(
    server: ServerProcess, database_name: str, workers: dict[int, httpx.AsyncClient]
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        admin = await admin_headers(http, database_name)

        deactivated_id, deactivated_token = await register(http)
        demoted_id, demoted_token = await register(http)
        _, logged_out_token = await register(http)
        issued = await http.post("/api/v1/tokens", json={"name": "job", "roles": ["librarian"]}, headers=admin)
        assert issued.status_code == 201, issued.text
        api_token, api_token_id = issued.json()["token"], issued.json()["id"]

        async def patch(user_id: int, body: dict[str, object]) -> None:
            response = await http.patch(f"/api/v1/users/{user_id}", json=body, headers=admin)
            assert response.status_code == 200, response.text

        async def logout_all() -> None:
            response = await http.post("/api/v1/auth/logout-all", headers=bearer(logged_out_token))
            assert response.status_code == 204, response.text

        async def revoke() -> None:
            response = await http.delete(f"/api/v1/tokens/{api_token_id}", headers=admin)
            assert response.status_code == 204, response.text

        cases: list[tuple[str, dict[str, str], Callable[[], Awaitable[None]]]] = [
            ("deactivation", bearer(deactivated_token), lambda: patch(deactivated_id, {"is_active": False})),
            ("role change", bearer(demoted_token), lambda: patch(demoted_id, {"role": "librarian"})),
            ("logout-all", bearer(logged_out_token), logout_all),
            ("API token revocation", {"X-API-Key": api_token}, revoke),
        ]
        for _name, headers, change in cases:
            await assert_revoked_everywhere(workers, "/api/v1/bookings?limit=20", headers, change)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _hmac_token(claims: dict[str, object], key: bytes, algorithm: str) -> str:
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[algorithm]

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (
        part(json.dumps({"alg": algorithm, "typ": "JWT"}).encode()) + "." + part(json.dumps(claims).encode())
    )
    return f"{signing_input}.{part(hmac.new(key, signing_input.encode(), digest).digest())}"


async def test_forged_and_foreign_jwts_are_401_over_http(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        user_id, token = await register(http)
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["sub"] == str(user_id)
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key = SECRET_KEY.encode()
        now = int(time.time())
        forgeries = {
            "alg none": jwt.encode(claims, key=None, algorithm="none"),
            "RS256 token": jwt.encode(claims, private_key, algorithm="RS256"),
            "HS256 keyed with an RSA public key": _hmac_token(claims, public_pem, "HS256"),
            "HS512 with the real secret": _hmac_token(claims, key, "HS512"),
            "wrong audience": _hmac_token({**claims, "aud": "another-service"}, key, "HS256"),
            "wrong issuer": _hmac_token({**claims, "iss": "another-issuer"}, key, "HS256"),
            "expired": _hmac_token({**claims, "iat": now - 3600, "exp": now - 60}, key, "HS256"),
        }
        for name, forged in forgeries.items():
            response = await http.get("/api/v1/auth/me", headers=bearer(forged))
            assert response.status_code == 401, name
            assert response.headers["content-type"] == "application/problem+json", name
            assert "Traceback" not in response.text
        genuine = await http.get("/api/v1/auth/me", headers=bearer(_hmac_token(claims, key, "HS256")))
        assert genuine.status_code == 200 and genuine.json()["id"] == user_id
