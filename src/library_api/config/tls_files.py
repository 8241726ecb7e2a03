"""Start-up checks of the server's TLS files: certificate, key, CA and CRL, one line per problem.

A bad file stops the service before any port opens (:func:`check_tls_files`, run by the settings checks and
by ``serve``/``check-config`` for the summary and warnings). The files are really read with
:mod:`cryptography`: the certificate is current and not about to expire, the key fits it, the CA issued it, the
CRL is signed by the CA. :func:`signed_by` is shared with the verification of forwarded client certificates.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes, PrivateKeyTypes

EXPIRY_WARNING_DAYS = 30
"""A server certificate with fewer days left than this is reported as a warning at start."""


def signed_by(certificate: x509.Certificate | x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key made the signature on ``certificate`` (or CRL)."""
    public_key: CertificateIssuerPublicKeyTypes = issuer.public_key()  # type: ignore[assignment]
    if isinstance(certificate, x509.CertificateRevocationList):
        return certificate.is_signature_valid(public_key)
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _read(path: Path, key: str, problems: list[str]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        problems.append(f"{key}: cannot read {path}: {exc.strerror or exc}")
        return None


def _public_bytes(key: PrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(slots=True)
class TLSFileReport:
    """The outcome of :func:`check_tls_files`: problems stop the start, warnings are logged, summary is shown."""

    problems: list[str]
    warnings: list[str]
    summary: list[str]


def check_tls_files(
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    crl: Path | None,
    *,
    now: dt.datetime | None = None,
) -> TLSFileReport:
    """Check the server's TLS files as a server would use them; each problem is one line naming its setting."""
    now = now or dt.datetime.now(dt.UTC)
    report = TLSFileReport([], [], [])
    server = _check_certificate(cert, report, now) if cert is not None else None
    if key is not None:
        _check_key(key, server, report)
    authorities = _check_ca(ca, server, report) if ca is not None else []
    if crl is not None:
        _check_crl(crl, authorities, report)
    return report


def _check_certificate(path: Path, report: TLSFileReport, now: dt.datetime) -> x509.Certificate | None:
    data = _read(path, "TLS_CERT_FILE", report.problems)
    if data is None:
        return None
    try:
        certificate = x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        report.problems.append(f"TLS_CERT_FILE: {path} holds no PEM certificate")
        return None
    expires = certificate.not_valid_after_utc
    if expires <= now:
        report.problems.append(f"TLS_CERT_FILE: the certificate in {path} expired on {expires:%Y-%m-%d %H:%M} UTC")
    elif certificate.not_valid_before_utc > now:
        starts = certificate.not_valid_before_utc
        report.problems.append(
            f"TLS_CERT_FILE: the certificate in {path} is not valid before {starts:%Y-%m-%d %H:%M} UTC"
        )
    elif expires - now < dt.timedelta(days=EXPIRY_WARNING_DAYS):
        report.warnings.append(
            f"TLS_CERT_FILE: the certificate in {path} expires in {(expires - now).days} day(s), on {expires:%Y-%m-%d}"
        )
    report.summary.append(
        f"server certificate: {certificate.subject.rfc4514_string()}, issued by "
        f"{certificate.issuer.rfc4514_string()}, valid until {expires:%Y-%m-%d %H:%M} UTC"
    )
    return certificate


def _check_key(path: Path, certificate: x509.Certificate | None, report: TLSFileReport) -> None:
    data = _read(path, "TLS_KEY_FILE", report.problems)
    if data is None:
        return
    mode = os.stat(path).st_mode
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        report.problems.append(
            f"TLS_KEY_FILE: {path} is readable by every user (mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        report.problems.append(f"TLS_KEY_FILE: {path} holds no unencrypted PEM private key")
        return
    if certificate is not None and _public_bytes(key) != certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        report.problems.append(f"TLS_KEY_FILE: the key in {path} does not match the certificate in TLS_CERT_FILE")


def _check_ca(path: Path, server: x509.Certificate | None, report: TLSFileReport) -> list[x509.Certificate]:
    data = _read(path, "TLS_CA_FILE", report.problems)
    if data is None:
        return []
    try:
        authorities = x509.load_pem_x509_certificates(data)
    except ValueError:
        report.problems.append(f"TLS_CA_FILE: {path} holds no PEM certificate")
        return []
    if server is not None and not any(signed_by(server, authority) for authority in authorities):
        report.problems.append(f"TLS_CA_FILE: no certificate in {path} signed the server certificate in TLS_CERT_FILE")
    report.summary.extend(f"client CA: {authority.subject.rfc4514_string()}" for authority in authorities)
    return authorities


def _check_crl(path: Path, authorities: list[x509.Certificate], report: TLSFileReport) -> None:
    data = _read(path, "TLS_CRL_FILE", report.problems)
    if data is None:
        return
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        report.problems.append(f"TLS_CRL_FILE: {path} holds no PEM certificate revocation list")
        return
    if authorities and not any(signed_by(crl, authority) for authority in authorities):
        report.problems.append(f"TLS_CRL_FILE: the revocation list in {path} is not signed by the CA in TLS_CA_FILE")
    report.summary.append(f"revocation list: {len(crl)} revoked, issued {crl.last_update_utc:%Y-%m-%d %H:%M} UTC")
