"""Identities from client certificates and the TLS context's policy, on real certificates and a real handshake."""

from __future__ import annotations

import asyncio
import pickle
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from library_api.security.certificates import CertificateReader, issuer_names
from library_api.security.issuing import Authority, IssuingError
from library_api.security.tls import TLS12_CIPHERS, RevocationList, TLSFiles, build_server_context
from library_api.server.tls import ConnectionTLS, ServerTLS, find_shutdown
from tests.support.certs import PKI


def pem(pki: PKI, name: str) -> str:
    return pki.cert(name).read_text()


def test_organization_attributes_are_roles_and_cn_is_identity(pki: PKI) -> None:
    identity = CertificateReader().identity(pem(pki, "librarian"))
    assert (identity.common_name, identity.roles, identity.problem) == ("alice", {"librarian", "monitor"}, None)
    assert identity.subject == "CN=alice,O=monitor,O=librarian"


def test_uri_sans_with_the_prefix_are_roles_when_configured(pki: PKI) -> None:
    reader = CertificateReader("uri", "urn:library-api:role:")
    assert reader.identity(pem(pki, "uri-roles")).roles == {"librarian"}
    assert reader.identity(pem(pki, "librarian")).roles == frozenset()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("no-eku", "lacks the clientAuth extended key usage"),
        ("server-auth-only", "lacks the clientAuth extended key usage"),
        ("ca-as-leaf", "A CA certificate cannot identify a client"),
        ("foreign", "must be issued directly by a configured certificate authority"),
    ],
)
def test_leaves_the_tls_layer_lets_through_are_still_refused(pki: PKI, name: str, problem: str) -> None:
    reader = CertificateReader(trusted_issuers=issuer_names(pki.ca))
    found = reader.identity(pem(pki, name)).problem
    assert found is not None and problem in found


def test_unreadable_or_nameless_certificates_are_refused(pki: PKI) -> None:
    assert CertificateReader().identity("-----BEGIN CERTIFICATE-----\nxx\n").problem == (
        "The client certificate cannot be read."
    )
    certificate, _ = pki.authority.issue("", organizations=["librarian"])
    text = certificate.public_bytes(serialization.Encoding.PEM).decode()
    assert CertificateReader().identity(text).problem == "The client certificate has no subject common name."


def test_each_certificate_is_parsed_once_and_the_cache_is_bounded(pki: PKI) -> None:
    reader = CertificateReader(capacity=2)
    first = reader.identity(pem(pki, "librarian"))
    assert reader.identity(pem(pki, "librarian")) is first
    reader.identity(pem(pki, "reader"))
    reader.identity(pem(pki, "unknown-role"))
    assert reader.identity(pem(pki, "librarian")) is not first


def test_the_context_allows_only_tls12_ecdhe_aead_and_tls13(pki: PKI) -> None:
    context = build_server_context(TLSFiles(pki.cert("server"), pki.key("server")))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_NONE
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(name.startswith("ECDHE-") for name in tls12)
    assert all("GCM" in name or "CHACHA20" in name for name in tls12)
    assert set(tls12) <= set(TLS12_CIPHERS.split(":"))
    assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_TICKET


def test_optional_client_certificates_and_crl_flags(pki: PKI) -> None:
    context = build_server_context(TLSFiles(pki.cert("server"), pki.key("server"), pki.ca, pki.crl))
    assert context.verify_mode is ssl.CERT_OPTIONAL
    assert context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert context.verify_flags & ssl.VERIFY_X509_STRICT


def test_the_revocation_list_reloads_only_on_change_and_survives_a_broken_file(pki: PKI, tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    crl.write_bytes(pki.crl.read_bytes())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    revocations = RevocationList(context, crl)
    revocations.load()
    revocations.refresh()
    assert revocations.reloads == 0
    crl.write_text("-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n")
    revocations.refresh()
    assert revocations.reloads == 0
    crl.unlink()
    revocations.refresh()
    assert revocations.reloads == 0
    pki.revoke("revoked")
    try:
        crl.write_bytes(pki.crl.read_bytes())
        revocations.refresh()
        assert revocations.reloads == 1
    finally:
        pki.revoke()


async def test_the_tls_extension_of_a_real_connection(pki: PKI) -> None:
    tls = ServerTLS(TLSFiles(pki.cert("server"), pki.key("server"), pki.ca, None, True))
    clone = pickle.loads(pickle.dumps(tls))
    assert clone.files == tls.files and clone._context is None
    seen: list[dict[str, object]] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append(scope["extensions"]["tls"])  # type: ignore[index]

    async def on_connection(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        wrapped = ConnectionTLS(app, tls.extension(writer.get_extra_info("ssl_object")))  # type: ignore[arg-type]
        await wrapped({"type": "http", "extensions": {"other": {}}}, None, None)  # type: ignore[arg-type]
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=tls.context())
    port = server.sockets[0].getsockname()[1]
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context("reader"))
    await _reader.read()
    writer.close()
    server.close()
    await server.wait_closed()
    (extension,) = seen
    assert extension["client_cert_name"] == "CN=bob,O=reader"
    assert extension["client_cert_chain"] == [pki.cert("reader").read_text()]
    assert extension["tls_version"] == 0x0304
    assert extension["cipher_suite"] in {0x1301, 0x1302, 0x1303}


def test_find_shutdown_looks_through_wrappers() -> None:
    class Holder:
        pass

    inner = Holder()
    inner.state = Holder()  # type: ignore[attr-defined]
    inner.state.context = Holder()  # type: ignore[attr-defined]
    inner.state.context.shutdown = "coordinator"  # type: ignore[attr-defined]
    outer = Holder()
    outer.app = inner  # type: ignore[attr-defined]
    assert find_shutdown(outer) == "coordinator"
    assert find_shutdown(object()) is None


def test_authority_load_reports_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(IssuingError, match="no certificate authority in"):
        Authority.load(tmp_path)
