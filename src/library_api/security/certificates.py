"""X.509 certificates: who a client certificate names, and whether the server's TLS files can start a server.

Two jobs share this module because both read certificates with :mod:`cryptography`:

* **Identity.** A verified client certificate's subject common name (CN) is the caller's identity and its
  organisation (O) attributes are its roles: the Kubernetes convention. With ``CERTIFICATE_ROLE_SOURCE=uri``
  the roles come instead from URI subject alternative names that start with a prefix
  (``urn:library-api:role:librarian``). The TLS layer has already verified the chain, the validity period,
  the CRL and the ``ssl_client`` purpose; :class:`CertificateReader` adds what OpenSSL leaves to the
  application: the leaf must carry the clientAuth extended key usage (a leaf without any EKU passes OpenSSL),
  must not be a CA certificate, and must be issued directly by a certificate of the configured CA file, which
  bounds the chain to the hierarchy the operator installed (Python's ``ssl`` offers no verify depth). A
  certificate a proxy forwarded in a header has passed no handshake of ours: it is verified in full first by
  :class:`library_api.security.forwarded_certificates.ForwardedCertificateVerifier`.
* **Start-up checks** of the server's certificate, key, CA and CRL (:func:`check_tls_files`): every problem is
  one line naming the setting, so a bad file stops the service before any port opens.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes, PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RoleSource = Literal["organization", "uri"]

EXPIRY_WARNING_DAYS = 30
"""A server certificate with fewer days left than this is reported as a warning at start."""


@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """What a client certificate says about its holder; ``problem`` is set when it must be refused."""

    common_name: str
    roles: frozenset[str]
    subject: str
    problem: str | None = None


class CertificateReader:
    """Reads identities from client certificates, remembering the answer for each certificate it has seen.

    A connection presents its certificate once and sends many requests; the reader parses each distinct
    certificate once (bounded LRU), so a request costs a dictionary lookup.
    """

    def __init__(
        self,
        role_source: RoleSource = "organization",
        uri_prefix: str = "urn:library-api:role:",
        trusted_issuers: frozenset[bytes] | None = None,
        capacity: int = 4096,
    ) -> None:
        self.role_source = role_source
        self.uri_prefix = uri_prefix
        self.trusted_issuers = trusted_issuers
        self.capacity = capacity
        self._seen: OrderedDict[str, CertificateIdentity] = OrderedDict()

    def identity(self, pem: str) -> CertificateIdentity:
        """The identity in ``pem`` (the verified leaf), parsed once per distinct certificate."""
        found = self._seen.get(pem)
        if found is not None:
            self._seen.move_to_end(pem)
            return found
        found = self._read(pem)
        self._seen[pem] = found
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return found

    def _read(self, pem: str) -> CertificateIdentity:
        try:
            certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return CertificateIdentity("", frozenset(), "", "The client certificate cannot be read.")
        subject = certificate.subject.rfc4514_string()
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else ""
        roles = self._roles(certificate)
        problem = self._problem(certificate)
        return CertificateIdentity(common_name, roles, subject, problem)

    def _roles(self, certificate: x509.Certificate) -> frozenset[str]:
        if self.role_source == "organization":
            attributes = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
            return frozenset(str(attribute.value) for attribute in attributes)
        try:
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return frozenset()
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
        return frozenset(uri.removeprefix(self.uri_prefix) for uri in uris if uri.startswith(self.uri_prefix))

    def _problem(self, certificate: x509.Certificate) -> str | None:
        problem = leaf_problem(certificate)
        if problem is not None:
            return problem
        if self.trusted_issuers is not None and certificate.issuer.public_bytes() not in self.trusted_issuers:
            return "The client certificate must be issued directly by a configured certificate authority."
        return None


def leaf_problem(certificate: x509.Certificate) -> str | None:
    """Why ``certificate`` cannot identify a client whatever signed it: no common name, a CA, or no clientAuth.

    OpenSSL's ``ssl_client`` purpose check lets a leaf without any extended key usage through; this rule does
    not, for presented and forwarded certificates alike.
    """
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or not str(names[0].value):
        return "The client certificate has no subject common name."
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            return "A CA certificate cannot identify a client."
    except x509.ExtensionNotFound:
        pass
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "The client certificate lacks the clientAuth extended key usage."
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return "The client certificate lacks the clientAuth extended key usage."
    return None


def issuer_names(ca_file: Path) -> frozenset[bytes]:
    """The DER-encoded subjects of every certificate in ``ca_file``: the issuers a client leaf may name."""
    return frozenset(ca.subject.public_bytes() for ca in x509.load_pem_x509_certificates(ca_file.read_bytes()))


def _read(path: Path, key: str, problems: list[str]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        problems.append(f"{key}: cannot read {path}: {exc.strerror or exc}")
        return None


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
