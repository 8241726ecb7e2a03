"""X.509 client certificates: who a verified client certificate names, and with which roles.

A verified client certificate's subject common name (CN) is the caller's identity and its
organisation (O) attributes are its roles: the Kubernetes convention. With ``CERTIFICATE_ROLE_SOURCE=uri``
the roles come instead from URI subject alternative names that start with a prefix
(``urn:library-api:role:librarian``). The TLS layer has already verified the chain, the validity period,
the CRL and the ``ssl_client`` purpose; :class:`CertificateReader` adds what OpenSSL leaves to the
application: the leaf must carry the clientAuth extended key usage (a leaf without any EKU passes OpenSSL),
must not be a CA certificate, and must be issued directly by a certificate of the configured CA file, which
bounds the chain to the hierarchy the operator installed (Python's ``ssl`` offers no verify depth). A
certificate a proxy forwarded in a header has passed no handshake of ours: it is verified in full first by
:class:`library_api.security.forwarded_certificates.ForwardedCertificateVerifier`.

The start-up checks of the server's own TLS files are configuration checks: :mod:`library_api.config.tls_files`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RoleSource = Literal["organization", "uri"]


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
