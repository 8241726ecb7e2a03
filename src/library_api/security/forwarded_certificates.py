"""Client certificates that a proxy forwards in a header, verified here as a TLS handshake would verify them.

A certificate presented in our own TLS handshake has been checked by OpenSSL before the application sees it. A
certificate that arrives in ``ssl-client-cert`` from a proxy has been checked by nobody we can see: the header
is text, and a peer that may send it may send any text. So a forwarded certificate proves nothing by itself.
:class:`ForwardedCertificateVerifier` checks it exactly as the handshake would, against the same files:

* it parses as one PEM certificate;
* a certificate of ``TLS_CA_FILE`` signed it directly (the signature is verified with that CA's key; an issuer
  *name* that merely equals the CA's proves nothing);
* it is valid now (``notBefore`` ≤ now < ``notAfter``), checked at every request, not once per certificate;
* it is not revoked by ``TLS_CRL_FILE`` when one is configured; the list is read again whenever the file
  changes, it must be signed by the issuing CA, and an expired list refuses every certificate (OpenSSL's rule);
* it carries the clientAuth extended key usage, is not a CA certificate, and names a subject common name
  (:func:`library_api.security.certificates.leaf_problem`, the rule presented certificates follow too).

The parse and signature result is remembered per distinct certificate (bounded), so a proxy forwarding the
same certificate on every request costs a dictionary lookup, a clock read and a ``stat`` of the CRL file.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from library_api.config.tls_files import signed_by
from library_api.security.certificates import leaf_problem

logger = logging.getLogger("library_api.tls")

Clock = Callable[[], dt.datetime]

_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)
"""One PEM revocation list; a CRL file may hold several (one per issuing CA), as OpenSSL reads it."""


def utc_now() -> dt.datetime:
    """The current time, timezone-aware, as certificate validity is compared."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A forwarded certificate that parsed and whose signature a configured CA made."""

    certificate: x509.Certificate
    issuer: x509.Certificate


class RevocationFile:
    """A CRL file read on demand and again whenever it changes; a list no configured CA signed is ignored."""

    def __init__(self, path: Path, authorities: list[x509.Certificate]) -> None:
        self.path = path
        self.authorities = authorities
        self._signature: tuple[int, int, int] | None = None
        self._lists: list[x509.CertificateRevocationList] = []
        self.reloads = 0

    def current(self) -> list[x509.CertificateRevocationList]:
        """The lists in force: the file's, read again if it changed; the previous ones if it cannot be read."""
        try:
            info = os.stat(self.path)
        except OSError:
            return self._lists
        signature = (info.st_mtime_ns, info.st_size, info.st_ino)
        if signature != self._signature:
            self._reload(signature)
        return self._lists

    def _reload(self, signature: tuple[int, int, int]) -> None:
        try:
            blocks = _CRL_BLOCK.findall(self.path.read_bytes())
            lists = [x509.load_pem_x509_crl(block) for block in blocks]
            if not lists:
                raise ValueError("no PEM revocation list in the file")
        except (OSError, ValueError) as exc:
            logger.warning("revocation list %s could not be read (%s); the previous list stays", self.path, exc)
            return
        trusted = [crl for crl in lists if any(signed_by(crl, authority) for authority in self.authorities)]
        if len(trusted) != len(lists):
            logger.warning("revocation list %s: %d list(s) not signed by TLS_CA_FILE ignored", self.path, len(lists))
        self._lists = trusted
        self._signature = signature
        self.reloads += 1


class ForwardedCertificateVerifier:
    """Decides whether a forwarded client certificate (PEM) would have passed our own mTLS handshake."""

    def __init__(
        self,
        ca_file: Path,
        crl_file: Path | None = None,
        *,
        clock: Clock = utc_now,
        capacity: int = 4096,
    ) -> None:
        self.authorities = x509.load_pem_x509_certificates(ca_file.read_bytes())
        self.revocations = RevocationFile(crl_file, self.authorities) if crl_file is not None else None
        self.clock = clock
        self.capacity = capacity
        self._seen: OrderedDict[str, _Parsed | str] = OrderedDict()

    def problem(self, pem: str) -> str | None:
        """Why ``pem`` must be refused, in words a client may read; ``None`` when it verifies."""
        parsed = self._parsed(pem)
        if isinstance(parsed, str):
            return parsed
        certificate = parsed.certificate
        now = self.clock()
        if now < certificate.not_valid_before_utc:
            return "The client certificate is not valid yet."
        if now >= certificate.not_valid_after_utc:
            return "The client certificate has expired."
        if self.revocations is not None:
            return self._revocation_problem(certificate, parsed.issuer, now)
        return None

    def _revocation_problem(
        self, certificate: x509.Certificate, issuer: x509.Certificate, now: dt.datetime
    ) -> str | None:
        assert self.revocations is not None
        lists = [crl for crl in self.revocations.current() if crl.issuer == issuer.subject]
        if not lists:
            return "No revocation list of the client certificate's issuer is in force."
        newest = max(lists, key=lambda crl: crl.last_update_utc)
        if newest.next_update_utc is not None and newest.next_update_utc <= now:
            return "The revocation list of the client certificate's issuer has expired."
        if newest.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None:
            return "The client certificate has been revoked."
        return None

    def _parsed(self, pem: str) -> _Parsed | str:
        found = self._seen.get(pem)
        if found is not None:
            self._seen.move_to_end(pem)
            return found
        found = self._parse(pem)
        self._seen[pem] = found
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return found

    def _parse(self, pem: str) -> _Parsed | str:
        try:
            certificates = x509.load_pem_x509_certificates(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return "The client certificate cannot be read."
        certificate = certificates[0]
        issuer = next((authority for authority in self.authorities if signed_by(certificate, authority)), None)
        if issuer is None:
            return "The client certificate is not signed by a configured certificate authority."
        return leaf_problem(certificate) or _Parsed(certificate, issuer)
