"""A small certificate authority for mutual TLS: the engine behind ``library-api certs``.

The authority lives in one directory: ``ca.pem`` and ``ca-key.pem`` (the key is written 0600), ``revoked.json``
(the serial numbers revoked so far) and ``crl.pem`` (the signed revocation list servers load as
``TLS_CRL_FILE``). Keys are ECDSA P-256 by default or RSA 3072; server certificates live at most 366 days
(the CA/Browser Forum's former ceiling, accepted by every client). Client certificates carry their roles as
subject O attributes (the Kubernetes convention) and, with ``uri_roles``, also as URI subject alternative names
``urn:library-api:role:<role>``; they carry the clientAuth extended key usage and nothing else.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

MAX_SERVER_DAYS = 366
"""The longest lifetime the tool gives a server certificate."""

ROLE_URI_PREFIX = "urn:library-api:role:"
"""Prefix of the URI SANs that carry roles (``CERTIFICATE_ROLE_URI_PREFIX`` must match to read them)."""

CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates start this long before they are made, so a peer whose clock is slightly behind accepts them."""


class IssuingError(Exception):
    """A request the authority refuses; the message is one line for the operator."""


def new_key(key_type: KeyType = "ec") -> PrivateKey:
    """A fresh private key: ECDSA P-256, or RSA 3072."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP256R1())


def write_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by its owner only (created 0600, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def write_certificate(path: Path, certificate: x509.Certificate) -> None:
    """Write ``certificate`` as PEM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _key_usage(*, signing: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA certificate with its key: it issues certificates and signs revocation lists."""

    certificate: x509.Certificate
    key: PrivateKey

    @classmethod
    def create(cls, common_name: str = "Library API CA", days: int = 3650, key_type: KeyType = "ec") -> Authority:
        """A new self-signed root CA allowed to sign leaf certificates only (path length 0)."""
        key = new_key(key_type)
        now = dt.datetime.now(dt.UTC)
        name = _name(common_name)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signing=False, ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def load(cls, directory: Path) -> Authority:
        """The authority stored in ``directory`` by :meth:`save`."""
        try:
            certificate = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
            key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            message = f"no certificate authority in {directory} (run 'library-api certs init-ca'): {exc}"
            raise IssuingError(message) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise IssuingError(f"{directory / 'ca-key.pem'} holds an unsupported key type")
        return cls(certificate, key)

    def save(self, directory: Path) -> None:
        """Write ``ca.pem`` and ``ca-key.pem`` (0600) into ``directory``."""
        write_certificate(directory / "ca.pem", self.certificate)
        write_key(directory / "ca-key.pem", self.key)

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        uris: Sequence[str] = (),
        usages: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
        days: float = 365,
        not_before: dt.datetime | None = None,
        key_type: KeyType = "ec",
    ) -> tuple[x509.Certificate, PrivateKey]:
        """A new leaf certificate and its key; ``usages`` are its extended key usages (clientAuth by default)."""
        key = new_key(key_type)
        start = not_before or dt.datetime.now(dt.UTC) - CLOCK_SKEW
        alternative: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        alternative += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
        alternative += [x509.UniformResourceIdentifier(uri) for uri in uris]
        issuer_key = self.certificate.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signing=True, ca=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        if alternative:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key

    def issue_server(self, hosts: Sequence[str], days: int = 365) -> tuple[x509.Certificate, PrivateKey]:
        """A server certificate for ``hosts`` (names and IP addresses), valid at most :data:`MAX_SERVER_DAYS`."""
        hosts = [host.strip() for host in hosts if host.strip()]
        if not hosts:
            raise IssuingError("a server certificate needs at least one --host")
        if not 1 <= days <= MAX_SERVER_DAYS:
            raise IssuingError(f"--days must be between 1 and {MAX_SERVER_DAYS} for a server certificate")
        addresses, names = [], []
        for host in hosts:
            try:
                addresses.append(str(ipaddress.ip_address(host)))
            except ValueError:
                names.append(host)
        return self.issue(
            hosts[0], dns_names=names, ip_addresses=addresses, usages=(ExtendedKeyUsageOID.SERVER_AUTH,), days=days
        )

    def issue_client(
        self, common_name: str, roles: Sequence[str], days: int = 365, *, uri_roles: bool = False
    ) -> tuple[x509.Certificate, PrivateKey]:
        """A client certificate naming ``common_name`` with ``roles`` as O attributes (and URI SANs if asked)."""
        if not common_name.strip():
            raise IssuingError("--cn must not be empty")
        uris = [f"{ROLE_URI_PREFIX}{role}" for role in roles] if uri_roles else []
        return self.issue(common_name, organizations=roles, uris=uris, days=days)

    def revocation_list(self, serials: Iterable[int], days: int = 7) -> x509.CertificateRevocationList:
        """A CRL revoking ``serials``, valid for ``days`` (servers reload it when the file changes)."""
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - dt.timedelta(seconds=1))
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        )
        for serial in sorted(set(serials)):
            revoked = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            builder = builder.add_revoked_certificate(revoked)
        return builder.sign(self.key, hashes.SHA256())


def revoked_serials(directory: Path) -> list[int]:
    """Serial numbers revoked so far in the authority in ``directory``."""
    path = directory / "revoked.json"
    if not path.exists():
        return []
    return [int(serial) for serial in json.loads(path.read_text())]


def write_revocation_list(authority: Authority, directory: Path, serials: Iterable[int]) -> Path:
    """Record ``serials`` as the revoked set and write a freshly signed ``crl.pem``, replacing it atomically."""
    serial_list = sorted(set(serials))
    (directory / "revoked.json").write_text(json.dumps([str(serial) for serial in serial_list]))
    crl = authority.revocation_list(serial_list)
    target = directory / "crl.pem"
    temporary = directory / "crl.pem.tmp"
    temporary.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    temporary.replace(target)
    return target


def describe(path: Path) -> list[str]:
    """A certificate file's summary, one ``field: value`` line each, for ``library-api certs show``."""
    try:
        certificate = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError) as exc:
        raise IssuingError(f"{path} holds no PEM certificate: {exc}") from None
    lines = [
        f"subject: {certificate.subject.rfc4514_string()}",
        f"issuer: {certificate.issuer.rfc4514_string()}",
        f"serial: {certificate.serial_number:x}",
        f"valid from: {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
        f"valid until: {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
    ]
    organizations = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if organizations:
        lines.append("roles (O): " + ", ".join(str(attribute.value) for attribute in organizations))
    for extension in certificate.extensions:
        value = extension.value
        if isinstance(value, x509.ExtendedKeyUsage):
            lines.append("extended key usage: " + ", ".join(oid._name for oid in value))
        elif isinstance(value, x509.SubjectAlternativeName):
            lines.append("alternative names: " + ", ".join(str(name.value) for name in value))
        elif isinstance(value, x509.BasicConstraints):
            lines.append(f"certificate authority: {'yes' if value.ca else 'no'}")
    return lines
