"""The security-mode policy: which of ``http``, ``https``, ``mtls`` and ``token`` the service runs in, and why.

``SECURITY_MODE=auto`` decides from the TLS files configured. The decision is a pure function of four settings;
the checks that the chosen mode's prerequisites hold (and that the files really are usable) are in
:mod:`library_api.config.checks` and :mod:`library_api.config.tls_files`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol


class ModeInputs(Protocol):
    """The settings the decision reads (:class:`library_api.config.settings.Settings` provides them)."""

    @property
    def security_mode(self) -> str:
        """``auto``, ``http``, ``https``, ``mtls`` or ``token``."""

    @property
    def tls_cert_file(self) -> Path | None:
        """The server certificate."""

    @property
    def tls_key_file(self) -> Path | None:
        """The server certificate's private key."""

    @property
    def tls_ca_file(self) -> Path | None:
        """The CA that issues client certificates."""


@dataclass(frozen=True, slots=True)
class SecurityDecision:
    """The mode the service runs in, whether it speaks TLS, and the reason (logged at start and by check-config)."""

    mode: Literal["http", "https", "mtls", "token"]
    tls: bool
    client_certificates: Literal["none", "optional", "required"]
    reason: str

    @property
    def requires_credentials(self) -> bool:
        """Whether every non-public route needs an authenticated caller (``token`` and ``mtls``)."""
        return self.mode in {"token", "mtls"}


def decide_security_mode(settings: ModeInputs) -> SecurityDecision:
    """Resolve ``SECURITY_MODE``: ``auto`` picks mtls with a CA, https with a certificate and key, else http.

    TLS is on whenever a certificate and key are configured (in ``token`` mode too); client certificates are
    required in ``mtls``, verified when offered in other modes with a CA, and not asked for without one.
    """
    has_pair = settings.tls_cert_file is not None and settings.tls_key_file is not None
    has_ca = settings.tls_ca_file is not None
    mode = settings.security_mode
    if mode == "auto":
        if has_pair and has_ca:
            chosen, reason = "mtls", "auto: TLS_CA_FILE is set, so client certificates from that CA are required"
        elif has_pair:
            chosen, reason = "https", "auto: TLS_CERT_FILE and TLS_KEY_FILE are set and no TLS_CA_FILE"
        else:
            chosen, reason = "http", "auto: no TLS_CERT_FILE/TLS_KEY_FILE, so plain HTTP"
    else:
        chosen, reason = mode, f"SECURITY_MODE={mode}"
    if chosen == "mtls":
        clients: Literal["none", "optional", "required"] = "required"
    else:
        clients = "optional" if has_ca and has_pair and chosen != "http" else "none"
    return SecurityDecision(chosen, has_pair and chosen != "http", clients, reason)  # type: ignore[arg-type]
