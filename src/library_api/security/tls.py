"""The one TLS configuration every server adapter uses, and the ASGI TLS extension it feeds.

:func:`build_server_context` follows Mozilla's *intermediate* profile (v6.0): TLS 1.2 and 1.3 only; the
TLS 1.2 suites are ECDHE key exchange with AEAD ciphers only (no DHE, no CBC), set explicitly rather than
trusting a server's or OpenSSL's default string; TLS 1.3 uses OpenSSL's three suites, which are the profile's.
Compression and renegotiation are off, and session tickets are off (Mozilla's advice when ticket keys are not
rotated; each worker would hold its own key anyway).

In ``mtls`` mode the context requires a client certificate (``CERT_REQUIRED``) that chains to the configured
CA, under strict X.509 checks; OpenSSL's ``ssl_client`` purpose check, applied by every server-side handshake,
refuses a leaf whose extended key usage lacks clientAuth or whose key usage does not allow signing (a CA
certificate presented as the leaf). The rest of the leaf policy is applied by
:class:`library_api.security.certificates.CertificateReader`.

**Revocation at run time.** With a CRL configured, the leaf is checked against it on every handshake
(``VERIFY_CRL_CHECK_LEAF``). :class:`RevocationList` looks at the CRL file's modification time at the start of
each handshake (the context's server-name callback runs for every ClientHello, with or without SNI) and loads a
changed file into the context's store; OpenSSL then uses the newest list of that issuer. A file that is
half-written or invalid is logged and the previous list stays in force.

:func:`tls_extension` builds the ``scope["extensions"]["tls"]`` dictionary of the ASGI TLS extension from a
connection's ``SSLObject`` once per connection; the server adapters in :mod:`library_api.server` attach it to
every request of that connection.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("library_api.tls")

TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
"""Mozilla intermediate v6.0, TLS 1.2 part: forward-secret ECDHE with AEAD ciphers, nothing else."""

TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
"""Protocol names as :mod:`ssl` reports them, and their wire numbers as the ASGI TLS extension wants them."""


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The files a TLS server is built from; ``ca`` asks for client certificates, ``crl`` checks them."""

    cert: Path
    key: Path
    ca: Path | None = None
    crl: Path | None = None
    require_client_certificate: bool = False


class RevocationList:
    """A CRL file loaded into an SSL context, reloaded whenever the file changes while the server runs."""

    def __init__(self, context: ssl.SSLContext, path: Path) -> None:
        self.context = context
        self.path = path
        self._loaded: tuple[int, int, int] | None = None
        self.reloads = 0

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def load(self) -> None:
        """Load the file now (at start: an unreadable CRL is a start-up error, raised to the caller)."""
        signature = self._signature()
        self.context.load_verify_locations(cafile=str(self.path))
        self._loaded = signature

    def refresh(self) -> None:
        """Load the file again if it changed since the last load; keep the previous list if it cannot be read."""
        signature = self._signature()
        if signature is None or signature == self._loaded:
            return
        try:
            self.context.load_verify_locations(cafile=str(self.path))
        except (ssl.SSLError, OSError) as exc:
            logger.warning("revocation list %s could not be reloaded (%s); the previous list stays", self.path, exc)
            return
        self._loaded = signature
        self.reloads += 1
        logger.info("revocation list %s reloaded", self.path)


def build_server_context(files: TLSFiles, alpn_protocols: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A server-side SSL context following the module's policy, for any of the server adapters."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    context.set_alpn_protocols(list(alpn_protocols))
    if files.ca is not None:
        context.load_verify_locations(cafile=str(files.ca))
        context.verify_mode = ssl.CERT_REQUIRED if files.require_client_certificate else ssl.CERT_OPTIONAL
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        context.verify_flags &= ~ssl.VERIFY_X509_PARTIAL_CHAIN
        if files.crl is not None:
            revocations = RevocationList(context, files.crl)
            revocations.load()
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF

            def on_client_hello(_connection: Any, _server_name: str | None, _context: ssl.SSLContext) -> None:
                revocations.refresh()

            context.sni_callback = on_client_hello
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def cipher_numbers(context: ssl.SSLContext) -> dict[str, int]:
    """The IANA number of every suite ``context`` may negotiate, by OpenSSL name (for the TLS extension)."""
    return {cipher["name"]: cipher["id"] & 0xFFFF for cipher in context.get_ciphers()}


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket, ciphers: dict[str, int]) -> dict[str, Any]:
    """The ASGI TLS extension for one established connection.

    ``client_cert_chain`` holds the verified leaf (PEM) when the client presented one: Python's :mod:`ssl`
    exposes only the leaf before 3.13, and the leaf is what identities are read from.
    """
    der = ssl_object.getpeercert(binary_form=True)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    name: str | None = None
    if der:
        from cryptography import x509  # noqa: PLC0415 - only connections with a client certificate need it

        name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": TLS_VERSIONS.get(version or ""),
        "cipher_suite": ciphers.get(cipher[0]) if cipher else None,
    }
