"""Sending one message over SMTP, and telling a failure worth retrying from one that is final.

With ``SMTP_SECURITY`` ``starttls`` (the default) or ``tls`` the server's certificate is verified, host name
included, against ``SMTP_CA_FILE`` when it is set (a private mail relay's CA) and the system's store otherwise;
there is no setting that turns verification off.
"""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from email.utils import formataddr, make_msgid

import aiosmtplib

from library_api.config import Settings


class DeliveryError(Exception):
    """The SMTP server did not take the message; ``transient`` says whether trying again later may work."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context for the SMTP server (``None`` with ``SMTP_SECURITY=none``), trusting ``SMTP_CA_FILE``."""
    if settings.smtp_security == "none":
        return None
    cafile = str(settings.smtp_ca_file) if settings.smtp_ca_file is not None else None
    return ssl.create_default_context(cafile=cafile)


class Mailer:
    """SMTP delivery with the configured server, security (STARTTLS, TLS or none) and credentials."""

    def __init__(self, settings: Settings) -> None:
        assert settings.smtp_host is not None
        assert settings.email_from is not None
        self._settings = settings
        self._host = settings.smtp_host
        self.sender = formataddr((settings.email_from_name, settings.email_from))
        self._domain = settings.email_from.rpartition("@")[2]
        self._tls = tls_context(settings)

    def compose(self, recipient: str, subject: str, body: str) -> EmailMessage:
        """A plain-text message from the configured sender."""
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = recipient
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(domain=self._domain)
        message.set_content(body)
        return message

    async def send(self, message: EmailMessage) -> None:
        """Deliver ``message`` or raise :class:`DeliveryError`."""
        settings = self._settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password is not None else None
        try:
            await aiosmtplib.send(
                message,
                hostname=self._host,
                port=settings.smtp_port,
                username=settings.smtp_user,
                password=password,
                use_tls=settings.smtp_security == "tls",
                start_tls=settings.smtp_security == "starttls",
                tls_context=self._tls,
                timeout=settings.smtp_timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refusal.code for refusal in exc.recipients]
            raise DeliveryError(f"recipient refused ({codes})", transient=all(400 <= c < 500 for c in codes)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            transient = 400 <= exc.code < 500 or isinstance(exc, aiosmtplib.SMTPAuthenticationError)
            raise DeliveryError(f"SMTP {exc.code}: {exc.message}"[:300], transient=transient) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}"[:300], transient=True) from exc
