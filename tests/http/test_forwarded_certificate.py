"""Forwarded client certificates (``ssl-client-cert``), tried as an attacker on the proxy's network would.

A certificate in a header counts only from a peer in ``FORWARDED_CERT_PROXIES``, and even then only when it
verifies against ``TLS_CA_FILE`` and ``TLS_CRL_FILE`` as a handshake would. Every forgery is a 401 on every
route (the public ones included: a wrong credential is never downgraded to anonymous); the WebSocket side is
in ``tests/realtime/test_forwarded_certificate.py``. ``TRUSTED_PROXIES`` alone moves the client address and
never makes a certificate believed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from library_api.config import ConfigError, load_settings
from tests.conftest import AppFactory
from tests.support.certs import PKI, make_pki
from tests.support.http import client_for

PROXY = "10.0.0.7"
"""The TLS-terminating proxy: the only peer named in ``FORWARDED_CERT_PROXIES``."""

NEIGHBOUR = "10.0.0.8"
"""Another host on the proxy's network, believed for addresses (``TRUSTED_PROXIES``) but not for certificates."""

FORGERIES = {
    "self-signed-admin": "The client certificate is not signed by a configured certificate authority.",
    "impostor": "The client certificate is not signed by a configured certificate authority.",
    "self-signed": "The client certificate is not signed by a configured certificate authority.",
    "foreign": "The client certificate is not signed by a configured certificate authority.",
    "expired": "The client certificate has expired.",
    "not-yet-valid": "The client certificate is not valid yet.",
    "revoked": "The client certificate has been revoked.",
    "server-auth-only": "The client certificate lacks the clientAuth extended key usage.",
    "no-eku": "The client certificate lacks the clientAuth extended key usage.",
    "ca-as-leaf": "A CA certificate cannot identify a client.",
}
"""Each forwarded certificate that must be refused, and the reason the client is told."""

ROUTES = ("/api/v1/auth/principal", "/api/v1/users", "/api/v1/books", "/health")
"""A route for anyone, one for administrators, the public catalogue, and a probe."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    made = make_pki(tmp_path_factory.mktemp("pki"))
    made.revoke("revoked")
    return made


def certificate_proxy(pki: PKI) -> dict[str, object]:
    """Settings of a service behind one certificate-verifying proxy, its neighbour trusted for addresses only."""
    return {
        "trusted_proxies": [PROXY, NEIGHBOUR],
        "forwarded_cert_proxies": [PROXY],
        "tls_ca_file": pki.ca,
        "tls_crl_file": pki.crl,
    }


async def test_a_certificate_proxy_forwards_a_valid_certificate(app_factory: AppFactory, pki: PKI) -> None:
    app = await app_factory(**certificate_proxy(pki))
    async with client_for(app, PROXY) as client:
        response = await client.get("/api/v1/auth/principal", headers=pki.forwarded("librarian"))
    assert response.json() == {
        "subject": "certificate:alice",
        "name": "alice",
        "credential": "certificate",
        "roles": ["librarian", "monitor"],
    }


@pytest.mark.parametrize("name", list(FORGERIES))
async def test_every_forged_or_invalid_certificate_is_refused_on_every_route(
    app_factory: AppFactory, pki: PKI, name: str
) -> None:
    app = await app_factory(**certificate_proxy(pki))
    async with client_for(app, PROXY) as client:
        answers = [await client.get(route, headers=pki.forwarded(name)) for route in ROUTES]
        created = await client.post("/api/v1/books", json={}, headers=pki.forwarded(name))
    for answer in [*answers, created]:
        assert answer.status_code == 401, (answer.request.url, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"] == "urn:library-api:problem:unauthorized"
        assert answer.json()["detail"] == FORGERIES[name]


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({"ssl-client-cert": "garbage", "ssl-client-verify": "SUCCESS"}, "The client certificate cannot be read."),
        ({"ssl-client-verify": "SUCCESS"}, "The proxy reported a verified client certificate but forwarded none."),
        (
            {"ssl-client-verify": "FAILED:certificate has expired"},
            "The proxy did not report the client certificate as verified.",
        ),
    ],
    ids=["garbage-pem", "success-without-certificate", "proxy-says-failed"],
)
async def test_a_claim_without_a_usable_certificate_is_refused(
    app_factory: AppFactory, pki: PKI, headers: dict[str, str], detail: str
) -> None:
    app = await app_factory(**certificate_proxy(pki))
    async with client_for(app, PROXY) as client:
        answer = await client.get("/api/v1/auth/principal", headers=headers)
    assert answer.status_code == 401
    assert answer.json()["detail"] == detail


@pytest.mark.parametrize("verify", ["NONE", "FAILED:unable to verify", ""])
async def test_a_valid_certificate_the_proxy_did_not_verify_is_refused(
    app_factory: AppFactory, pki: PKI, verify: str
) -> None:
    app = await app_factory(**certificate_proxy(pki))
    async with client_for(app, PROXY) as client:
        answer = await client.get("/api/v1/auth/principal", headers=pki.forwarded("librarian", verify))
    assert answer.status_code == 401
    assert answer.json()["detail"] == "The proxy did not report the client certificate as verified."


async def test_a_client_without_a_certificate_is_anonymous(app_factory: AppFactory, pki: PKI) -> None:
    app = await app_factory(**certificate_proxy(pki))
    async with client_for(app, PROXY) as client:
        quiet = await client.get("/api/v1/auth/principal", headers={"ssl-client-verify": "NONE"})
        bare = await client.get("/api/v1/auth/principal")
    assert quiet.json()["credential"] == bare.json()["credential"] == "anonymous"


@pytest.mark.parametrize("peer", [NEIGHBOUR, "198.51.100.20"], ids=["address-proxy", "outsider"])
async def test_only_certificate_proxies_are_believed(app_factory: AppFactory, pki: PKI, peer: str) -> None:
    app = await app_factory(**certificate_proxy(pki))
    async with client_for(app, peer) as client:
        whoami = await client.get("/api/v1/auth/principal", headers=pki.forwarded("librarian"))
        users = await client.get("/api/v1/users", headers=pki.forwarded("self-signed-admin"))
    assert whoami.json()["credential"] == "anonymous"
    assert users.status_code == 401


async def test_by_default_no_forwarded_certificate_is_believed(app_factory: AppFactory, pki: PKI) -> None:
    """The review's attack: loopback trusted as a proxy, a self-signed ``O=admin`` certificate in the header."""
    app = await app_factory(trusted_proxies=["127.0.0.1/32"], tls_ca_file=pki.ca)
    async with client_for(app, "127.0.0.1") as client:
        users = await client.get("/api/v1/users", headers=pki.forwarded("self-signed-admin"))
        whoami = await client.get("/api/v1/auth/principal", headers=pki.forwarded("librarian"))
    assert users.status_code == 401
    assert whoami.json()["credential"] == "anonymous"


async def test_revoking_takes_effect_on_the_next_request(app_factory: AppFactory, tmp_path: Path) -> None:
    own = make_pki(tmp_path / "pki")
    app = await app_factory(**certificate_proxy(own))
    async with client_for(app, PROXY) as client:
        before = await client.get("/api/v1/auth/principal", headers=own.forwarded("reader"))
        own.revoke("reader")
        after = await client.get("/api/v1/auth/principal", headers=own.forwarded("reader"))
    assert before.json()["subject"] == "certificate:bob"
    assert after.status_code == 401
    assert after.json()["detail"] == "The client certificate has been revoked."


def test_forwarding_certificates_without_a_ca_file_is_refused_at_start() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env={"FORWARDED_CERT_PROXIES": "10.0.0.7"}, env_file=None)
    assert refused.value.problems == [
        "FORWARDED_CERT_PROXIES: forwarded client certificates are verified against TLS_CA_FILE; set it, or "
        "empty FORWARDED_CERT_PROXIES"
    ]


def test_a_malformed_certificate_proxy_is_one_line(pki: PKI) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env={"FORWARDED_CERT_PROXIES": "10.0.0.7,nginx", "TLS_CA_FILE": str(pki.ca)}, env_file=None)
    assert refused.value.problems == ["FORWARDED_CERT_PROXIES: 'nginx' is not an IP address or network (CIDR)"]
