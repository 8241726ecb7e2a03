"""Sending one message over SMTP, and telling what a failure means for the next attempt.

One session per message, step by step: connect, EHLO, STARTTLS (and EHLO again) when configured, AUTH when
credentials are set, MAIL/RCPT/DATA, then QUIT. The caller learns that the server accepted the data (its 250
after DATA) through ``on_accepted`` *before* QUIT is sent: QUIT can take up to ``SMTP_TIMEOUT`` on a slow
server, and a process that died in that window used to send the mail again. A failure of QUIT itself is
ignored, the message is delivered.

Failures come in three kinds (:class:`Failure`): the server could not be reached or the session broke
(``connection``: retried until the mail's age limit), it answered 4xx (``transient``: retried, counting towards
``EMAIL_MAX_ATTEMPTS``), or it refused for good with 5xx (``permanent``: not retried).

With ``SMTP_SECURITY`` ``starttls`` (the default) or ``tls`` the server's certificate is verified, host name
included, against ``SMTP_CA_FILE`` when it is set (a private mail relay's CA) and the system's store otherwise;
there is no setting that turns verification off.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formataddr
from enum import StrEnum

import aiosmtplib

from library_api.config import Settings

logger = logging.getLogger("library_api.notifications")


class Failure(StrEnum):
    """What a failed delivery says about trying again."""

    CONNECTION = "connection"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


class DeliveryError(Exception):
    """The SMTP server did not take the message; ``failure`` says whether and how to try again."""

    def __init__(self, message: str, *, failure: Failure) -> None:
        super().__init__(message)
        self.failure = failure


def message_id_for(email_id: int, domain: str) -> str:
    """The Message-ID of an outbox row: derived from its id and the sender's domain, the same on every attempt."""
    return f"<library-api.outbox.{email_id}@{domain}>"


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
        self.domain = settings.email_from.rpartition("@")[2]
        self._tls = tls_context(settings)

    def compose(self, recipient: str, subject: str, body: str, *, message_id: str) -> EmailMessage:
        """A plain-text message from the configured sender, with the row's stable ``message_id``."""
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = recipient
        message["Subject"] = subject
        message["Message-ID"] = message_id
        message.set_content(body)
        return message

    async def send(self, message: EmailMessage, on_accepted: Callable[[], Awaitable[None]]) -> None:
        """Deliver ``message``, call ``on_accepted`` as soon as the server took it, then QUIT.

        Raises :class:`DeliveryError` when the message was not accepted; ``on_accepted`` is then not called.
        """
        settings = self._settings
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=settings.smtp_port,
            use_tls=settings.smtp_security == "tls",
            start_tls=False,
            tls_context=self._tls,
            timeout=settings.smtp_timeout,
        )
        try:
            await self._transfer(client, message)
        except BaseException:
            client.close()
            raise
        try:
            await on_accepted()
        finally:
            await self._quit(client)

    async def _transfer(self, client: aiosmtplib.SMTP, message: EmailMessage) -> None:
        """Everything up to the server's acceptance of the data; failures become :class:`DeliveryError`."""
        settings = self._settings
        try:
            await client.connect()
            await client.ehlo()
            if settings.smtp_security == "starttls":
                await client.starttls(tls_context=self._tls)
                await client.ehlo()
            if settings.smtp_user is not None and settings.smtp_password is not None:
                await client.login(settings.smtp_user, settings.smtp_password.get_secret_value())
            await client.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refusal.code for refusal in exc.recipients]
            failure = Failure.TRANSIENT if all(400 <= c < 500 for c in codes) else Failure.PERMANENT
            raise DeliveryError(f"recipient refused ({codes})", failure=failure) from exc
        except aiosmtplib.SMTPResponseException as exc:
            transient = 400 <= exc.code < 500 or isinstance(exc, aiosmtplib.SMTPAuthenticationError)
            failure = Failure.TRANSIENT if transient else Failure.PERMANENT
            raise DeliveryError(f"SMTP {exc.code}: {exc.message}"[:300], failure=failure) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}"[:300], failure=Failure.CONNECTION) from exc

    @staticmethod
    async def _quit(client: aiosmtplib.SMTP) -> None:
        """End the session politely; the message is delivered whatever QUIT does."""
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            logger.debug("QUIT after an accepted message failed (%s); the message is delivered", exc)
        finally:
            with contextlib.suppress(Exception):
                client.close()
