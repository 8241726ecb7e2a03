"""The verifier of forwarded client certificates: the checks a handshake makes, made on a header's text."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from library_api.http.networks import Networks
from library_api.http.request_origin import RequestOrigin
from library_api.http.stack import forwarded_certificate_check
from library_api.security.forwarded_certificates import ForwardedCertificateVerifier
from library_api.security.issuing import Authority
from tests.support.certs import PKI, make_pki


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path / "pki")


def pem(pki: PKI, name: str) -> str:
    return pki.cert(name).read_text()


def test_validity_is_judged_at_each_call_by_the_clock(pki: PKI) -> None:
    now = [dt.datetime.now(dt.UTC)]
    verifier = ForwardedCertificateVerifier(pki.ca, clock=lambda: now[0])
    assert verifier.problem(pem(pki, "reader")) is None
    now[0] += dt.timedelta(days=400)
    assert verifier.problem(pem(pki, "reader")) == "The client certificate has expired."
    now[0] -= dt.timedelta(days=800)
    assert verifier.problem(pem(pki, "reader")) == "The client certificate is not valid yet."


def test_a_chain_is_judged_by_its_first_certificate(pki: PKI) -> None:
    verifier = ForwardedCertificateVerifier(pki.ca)
    assert verifier.problem(pem(pki, "reader") + pki.ca.read_text()) is None
    assert verifier.problem(pki.ca.read_text() + pem(pki, "reader")) == "A CA certificate cannot identify a client."


def test_an_unreadable_crl_keeps_the_previous_list(pki: PKI) -> None:
    pki.revoke("revoked")
    verifier = ForwardedCertificateVerifier(pki.ca, pki.crl)
    assert verifier.problem(pem(pki, "revoked")) == "The client certificate has been revoked."
    pki.crl.write_text("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    assert verifier.problem(pem(pki, "revoked")) == "The client certificate has been revoked."
    pki.crl.write_text("no list at all\n")
    assert verifier.problem(pem(pki, "revoked")) == "The client certificate has been revoked."
    pki.crl.unlink()
    assert verifier.problem(pem(pki, "revoked")) == "The client certificate has been revoked."
    assert verifier.problem(pem(pki, "reader")) is None
    assert verifier.revocations is not None and verifier.revocations.reloads == 1


def test_a_crl_no_configured_ca_signed_revokes_nothing_and_refuses_everything(pki: PKI, tmp_path: Path) -> None:
    foreign = Authority.create("Foreign CA").revocation_list([])
    crl = tmp_path / "foreign-crl.pem"
    crl.write_bytes(foreign.public_bytes(serialization.Encoding.PEM))
    verifier = ForwardedCertificateVerifier(pki.ca, crl)
    assert verifier.problem(pem(pki, "reader")) == "No revocation list of the client certificate's issuer is in force."


def test_an_expired_crl_refuses_every_certificate(pki: PKI) -> None:
    verifier = ForwardedCertificateVerifier(
        pki.ca, pki.crl, clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    )
    assert verifier.problem(pem(pki, "reader")) == (
        "The revocation list of the client certificate's issuer has expired."
    )


def test_the_parse_cache_is_bounded(pki: PKI) -> None:
    verifier = ForwardedCertificateVerifier(pki.ca, capacity=2)
    for name in ("reader", "librarian", "monitor", "reader"):
        assert verifier.problem(pem(pki, name)) is None
    assert verifier.problem(pem(pki, "reader")) is None
    assert len(verifier._seen) == 2


def test_certificate_proxies_without_a_verifier_cannot_be_built(pki: PKI) -> None:
    with pytest.raises(ValueError, match="verifier"):
        RequestOrigin(Networks([]), Networks(["10.0.0.7"]))
    with pytest.raises(ValueError, match="TLS_CA_FILE"):
        forwarded_certificate_check(None, None, ["10.0.0.7"])
    assert forwarded_certificate_check(pki.ca, None, []) is None
