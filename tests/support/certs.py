"""Certificates for TLS tests, made with the service's own authority (``library_api.security.issuing``).

:func:`make_pki` writes a CA, a server certificate for 127.0.0.1, and a client certificate of every kind the
mTLS tests present (good ones with roles, and each way a certificate can be wrong), and gives ``ssl`` contexts
for clients holding them. :func:`server_tls` is a smaller set for a TLS server that only has to be trusted
(the SMTP relays of the mail tests).
"""

from __future__ import annotations

import datetime as dt
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from library_api.security.issuing import (
    Authority,
    PrivateKey,
    new_key,
    write_certificate,
    write_key,
    write_revocation_list,
)


@dataclass(frozen=True)
class PKI:
    """A directory of test certificates: ``cert(name)`` and ``key(name)`` give the file paths."""

    directory: Path
    authority: Authority

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}-key.pem"

    def client_context(
        self, name: str | None = None, *, maximum: ssl.TLSVersion | None = None, ciphers: str | None = None
    ) -> ssl.SSLContext:
        """A client context trusting the CA, presenting ``name``'s certificate when given."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if name is not None:
            context.load_cert_chain(str(self.cert(name)), str(self.key(name)))
        if maximum is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
                context.maximum_version = maximum
            context.set_ciphers("ALL:@SECLEVEL=0")
        if ciphers is not None:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers(ciphers)
        return context

    def client(self, base_url: str, name: str | None = None, **options: object) -> httpx.Client:
        """An httpx client for ``base_url`` presenting ``name``'s certificate."""
        return httpx.Client(base_url=base_url, verify=self.client_context(name), timeout=10.0, **options)  # type: ignore[arg-type]

    def forwarded(self, name: str, verify: str = "SUCCESS") -> dict[str, str]:
        """The headers a TLS-terminating proxy sends for a client that presented ``name``'s certificate."""
        return {"ssl-client-cert": quote(self.cert(name).read_text()), "ssl-client-verify": verify}

    def revoke(self, *names: str) -> None:
        """Rewrite the CRL so that it revokes the certificates of ``names``."""
        serials = [x509.load_pem_x509_certificate(self.cert(name).read_bytes()).serial_number for name in names]
        write_revocation_list(self.authority, self.directory, serials)


def _save(directory: Path, name: str, pair: tuple[object, object]) -> None:
    certificate, key = pair
    write_certificate(directory / f"{name}.pem", certificate)  # type: ignore[arg-type]
    write_key(directory / f"{name}-key.pem", key)  # type: ignore[arg-type]


def self_signed_leaf(common_name: str, organizations: list[str]) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed client leaf (clientAuth, not a CA) naming roles: what a forger makes for themselves."""
    key = new_key()
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization) for organization in organizations]
    )
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def make_pki(directory: Path) -> PKI:
    """A CA with server and client certificates of every kind the tests need, and an empty CRL."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority.create("Test Library CA")
    authority.save(directory)
    foreign = Authority.create("Foreign CA")
    now = dt.datetime.now(dt.UTC)
    _save(directory, "server", authority.issue_server(["127.0.0.1", "localhost"]))
    _save(directory, "librarian", authority.issue_client("alice", ["librarian", "monitor"]))
    _save(directory, "reader", authority.issue_client("bob", ["reader"]))
    _save(directory, "monitor", authority.issue_client("prometheus", ["monitor"]))
    _save(directory, "unknown-role", authority.issue_client("carol", ["astronaut"]))
    _save(directory, "revoked", authority.issue_client("dave", ["librarian"]))
    _save(directory, "uri-roles", authority.issue_client("erin", ["librarian"], uri_roles=True))
    _save(
        directory,
        "expired",
        authority.issue("frank", organizations=["librarian"], not_before=now - dt.timedelta(days=30), days=10),
    )
    _save(
        directory,
        "not-yet-valid",
        authority.issue("grace", organizations=["librarian"], not_before=now + dt.timedelta(days=2), days=10),
    )
    _save(directory, "foreign", foreign.issue_client("heidi", ["librarian"]))
    _save(
        directory,
        "server-auth-only",
        authority.issue("ivan", organizations=["librarian"], usages=(ExtendedKeyUsageOID.SERVER_AUTH,)),
    )
    _save(directory, "no-eku", authority.issue("judy", organizations=["librarian"], usages=()))
    self_signed = Authority.create("mallory")
    _save(directory, "self-signed", (self_signed.certificate, self_signed.key))
    _save(directory, "self-signed-admin", self_signed_leaf("mallory", ["admin"]))
    impostor = Authority.create(authority.certificate.subject.rfc4514_string().removeprefix("CN="))
    assert impostor.certificate.subject == authority.certificate.subject
    _save(directory, "impostor", impostor.issue_client("mallory", ["admin"]))
    write_certificate(directory / "ca-as-leaf.pem", authority.certificate)
    write_key(directory / "ca-as-leaf-key.pem", authority.key)
    write_revocation_list(authority, directory, [])
    return PKI(directory, authority)


@dataclass(frozen=True)
class ServerTls:
    """A private CA's PEM file and a server context with a certificate it issued for 127.0.0.1 and localhost."""

    ca_file: Path
    server_context: ssl.SSLContext


def server_tls(directory: Path) -> ServerTls:
    """A new CA (its certificate written to ``directory/ca.pem``) and a server context it vouches for."""
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return ServerTls(ca_file=ca_file, server_context=context)
