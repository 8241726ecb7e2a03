"""``/ws`` behind a certificate-verifying proxy: a forged forwarded certificate closes the handshake with 4401."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.realtime.conftest import SQLITE_ONLY, StartLive
from tests.support.certs import PKI, make_pki
from tests.support.live import receive

pytestmark = pytest.mark.parametrize(**SQLITE_ONLY)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    made = make_pki(tmp_path_factory.mktemp("pki"))
    made.revoke("revoked")
    return made


async def test_the_websocket_refuses_forgeries_and_accepts_a_valid_certificate(start_live: StartLive, pki: PKI) -> None:
    """The live server runs on loopback, so loopback plays the certificate proxy here."""
    live, _ = await start_live(forwarded_cert_proxies=["127.0.0.1"], tls_ca_file=pki.ca, tls_crl_file=pki.crl)
    for name in ("self-signed-admin", "impostor", "expired", "revoked", "server-auth-only"):
        async with connect(live.ws(f"forged-{name}"), additional_headers=pki.forwarded(name)) as client:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(client.recv(), timeout=10)
        assert client.close_code == 4401, name
    async with connect(live.ws("missing"), additional_headers={"ssl-client-verify": "SUCCESS"}) as client:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), timeout=10)
    assert client.close_code == 4401
    async with connect(live.ws("valid"), additional_headers=pki.forwarded("librarian")) as client:
        welcome = await receive(client)
    assert welcome["type"] == "welcome"
    assert welcome["data"]["subject"] == "certificate:alice"
