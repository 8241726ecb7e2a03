"""A client certificate forwarded by nginx (``ssl-client-cert``) counts only when a trusted proxy sends it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import AppFactory
from tests.support.certs import PKI, make_pki
from tests.support.http import client_for

PROXY = "10.0.0.7"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def forwarded(pki: PKI, name: str, verify: str = "SUCCESS") -> dict[str, str]:
    return {"ssl-client-cert": quote(pki.cert(name).read_text()), "ssl-client-verify": verify}


async def test_a_trusted_proxy_forwards_the_verified_certificate(app_factory: AppFactory, pki: PKI) -> None:
    app = await app_factory(trusted_proxies=[PROXY])
    async with client_for(app, PROXY) as client:
        response = await client.get("/api/v1/auth/principal", headers=forwarded(pki, "librarian"))
    assert response.json() == {
        "subject": "certificate:alice",
        "name": "alice",
        "credential": "certificate",
        "roles": ["librarian", "monitor"],
    }


@pytest.mark.parametrize(
    ("peer", "verify"),
    [("198.51.100.20", "SUCCESS"), (PROXY, "FAILED:certificate has expired"), (PROXY, "NONE")],
    ids=["untrusted-peer", "proxy-says-failed", "proxy-says-none"],
)
async def test_the_header_is_ignored_from_others_or_unless_verified(
    app_factory: AppFactory, pki: PKI, peer: str, verify: str
) -> None:
    app = await app_factory(trusted_proxies=[PROXY])
    async with client_for(app, peer) as client:
        whoami = await client.get("/api/v1/auth/principal", headers=forwarded(pki, "librarian", verify))
        create = await client.post("/api/v1/books", json={}, headers=forwarded(pki, "librarian", verify))
    assert whoami.json()["credential"] == "anonymous"
    assert create.status_code == 401


async def test_a_forwarded_certificate_without_client_auth_is_refused(app_factory: AppFactory, pki: PKI) -> None:
    app = await app_factory(trusted_proxies=[PROXY])
    async with client_for(app, PROXY) as client:
        response = await client.get("/api/v1/auth/principal", headers=forwarded(pki, "no-eku"))
    assert response.status_code == 401
    assert response.json()["detail"] == "The client certificate lacks the clientAuth extended key usage."


async def test_a_forwarded_value_that_is_not_a_certificate_is_ignored(app_factory: AppFactory, tmp_path: Path) -> None:
    app = await app_factory(trusted_proxies=[PROXY])
    async with client_for(app, PROXY) as client:
        response = await client.get(
            "/api/v1/auth/principal", headers={"ssl-client-cert": "garbage", "ssl-client-verify": "SUCCESS"}
        )
    assert response.json()["credential"] == "anonymous"
