"""The mailer against a real SMTP server (aiosmtpd) speaking STARTTLS, implicit TLS and AUTH.

The server's certificate is issued by a private CA (``trustme``) that the mailer trusts through ``SMTP_CA_FILE``;
without it the same server is refused, so the certificate really is verified. The server requires STARTTLS
before anything else, and AUTH only over TLS, as a production relay does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from library_api.config import ConfigError, Settings, load_settings
from library_api.notifications.mailer import DeliveryError, Failure, Mailer, message_id_for
from tests.conftest import fast_settings
from tests.support.certs import ServerTls, server_tls
from tests.support.ports import port_of, reserved_socket
from tests.support.smtp import SocketController

USER = "library@example.org"
PASSWORD = "relay-password-123"
SENDER = "noreply@library.example.org"

# aiosmtpd's AUTH guard knows TLS only as STARTTLS; the implicit-TLS relay turns it off and warns, rightly in
# general and needlessly for a connection that is TLS from its first byte.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@dataclass
class Relay:
    """What the SMTP server saw: each accepted message with the TLS version and the login it came over."""

    messages: list[Message] = field(default_factory=list)
    tls_versions: list[str | None] = field(default_factory=list)
    logins: list[tuple[str, str, str]] = field(default_factory=list)
    """(mechanism, login, password) of every AUTH attempt."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        ssl_object = server.transport.get_extra_info("ssl_object")
        self.tls_versions.append(None if ssl_object is None else ssl_object.version())
        self.messages.append(message_from_bytes(envelope.content))
        return "250 2.0.0 accepted"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, password = data.login.decode(), data.password.decode()
        self.logins.append((mechanism, login, password))
        return AuthResult(success=(login, password) == (USER, PASSWORD), handled=False)  # False: answer 535


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerTls:
    return server_tls(tmp_path_factory.mktemp("smtp-pki"))


@dataclass
class Server:
    """A running relay: its port and what it saw."""

    port: int
    relay: Relay


@pytest.fixture
def start_relay(pki: ServerTls) -> Iterator[Any]:
    """Start relays with ``security`` ``starttls`` (required before MAIL), ``tls`` or ``none``, optionally with AUTH."""
    controllers: list[Controller] = []

    def start(security: str, *, auth: bool = False, mechanisms: tuple[str, ...] = ("LOGIN", "PLAIN")) -> Server:
        relay = Relay()
        sock = reserved_socket()
        options: dict[str, Any] = {}
        if security == "starttls":
            options.update(tls_context=pki.server_context, require_starttls=True)
        elif security == "tls":
            # Implicit TLS: the whole connection is TLS, which aiosmtpd's STARTTLS-based AUTH guard cannot see.
            options.update(ssl_context=pki.server_context, auth_require_tls=False)
        if auth:
            excluded = [name for name in ("LOGIN", "PLAIN") if name not in mechanisms]
            options.update(authenticator=relay.authenticate, auth_required=True, auth_exclude_mechanism=excluded)
        controller = SocketController(relay, sock, **options)
        controller.start()
        controllers.append(controller)
        return Server(port=port_of(sock), relay=relay)

    yield start
    for controller in controllers:
        controller.stop()


def mailer(server: Server, security: str, **values: object) -> Mailer:
    settings = fast_settings(
        smtp_host="127.0.0.1", smtp_port=server.port, smtp_security=security, email_from=SENDER, **values
    )
    return Mailer(settings)


async def send(sender: Mailer, subject: str = "Booking confirmed") -> None:
    """Send one message the way the outbox does; fail unless the relay's acceptance was reported."""
    accepted: list[bool] = []

    async def on_accepted() -> None:
        accepted.append(True)

    message_id = message_id_for(1, SENDER.rpartition("@")[2])
    await sender.send(
        sender.compose("reader@example.org", subject, "Your booking is confirmed.", message_id=message_id),
        on_accepted,
    )
    assert accepted == [True]


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_delivery_over_a_verified_tls_connection(start_relay: Any, pki: ServerTls, security: str) -> None:
    server = start_relay(security)
    await send(mailer(server, security, smtp_ca_file=pki.ca_file), subject=f"Over {security}")
    assert [message["Subject"] for message in server.relay.messages] == [f"Over {security}"]
    assert server.relay.tls_versions[0] in {"TLSv1.2", "TLSv1.3"}
    assert server.relay.logins == []


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_a_certificate_from_an_untrusted_ca_is_refused(start_relay: Any, security: str) -> None:
    server = start_relay(security)
    with pytest.raises(DeliveryError) as refused:
        await send(mailer(server, security))  # the system's store does not know the private CA
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    # retried until the mail's age limit: an operator can fix it (SMTP_CA_FILE) and the mail still goes out
    assert refused.value.failure is Failure.CONNECTION
    assert server.relay.messages == []


@pytest.mark.parametrize(
    ("security", "mechanism"), [("starttls", "PLAIN"), ("starttls", "LOGIN"), ("tls", "PLAIN"), ("tls", "LOGIN")]
)
async def test_auth_logs_in_with_the_configured_account(
    start_relay: Any, pki: ServerTls, security: str, mechanism: str
) -> None:
    server = start_relay(security, auth=True, mechanisms=(mechanism,))
    sender = mailer(server, security, smtp_ca_file=pki.ca_file, smtp_user=USER, smtp_password=PASSWORD)
    await send(sender)
    assert server.relay.logins == [(mechanism, USER, PASSWORD)]
    assert len(server.relay.messages) == 1
    assert server.relay.tls_versions[0] in {"TLSv1.2", "TLSv1.3"}


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_wrong_credentials_are_refused_and_nothing_is_sent(
    start_relay: Any, pki: ServerTls, security: str
) -> None:
    server = start_relay(security, auth=True)
    sender = mailer(server, security, smtp_ca_file=pki.ca_file, smtp_user=USER, smtp_password="not-the-password")
    with pytest.raises(DeliveryError) as refused:
        await send(sender)
    assert "535" in str(refused.value)
    assert refused.value.failure is Failure.TRANSIENT  # credentials can be corrected without losing the mail
    # each mechanism the relay offers is tried, always with the configured account
    assert sorted(server.relay.logins) == [("LOGIN", USER, "not-the-password"), ("PLAIN", USER, "not-the-password")]
    assert server.relay.messages == []


async def test_security_none_speaks_plain_smtp_to_a_local_relay(start_relay: Any) -> None:
    server = start_relay("none")
    await send(mailer(server, "none"))
    assert server.relay.tls_versions == [None]


async def test_starttls_is_required_of_the_relay(start_relay: Any, pki: ServerTls) -> None:
    server = start_relay("none")  # a relay that offers no STARTTLS: the mail is not sent in clear instead
    with pytest.raises(DeliveryError) as refused:
        await send(mailer(server, "starttls", smtp_ca_file=pki.ca_file))
    assert "STARTTLS" in str(refused.value)
    assert server.relay.messages == []


async def test_without_credentials_a_relay_that_requires_auth_refuses_the_mail(
    start_relay: Any, pki: ServerTls
) -> None:
    server = start_relay("starttls", auth=True)
    with pytest.raises(DeliveryError) as refused:
        await send(mailer(server, "starttls", smtp_ca_file=pki.ca_file))
    assert "530" in str(refused.value)
    assert server.relay.messages == []


def test_the_ca_file_must_exist_and_hold_certificates(tmp_path: Path, pki: ServerTls) -> None:
    mail = {"SMTP_HOST": "mail.example.org", "EMAIL_FROM": SENDER}
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for path, problem in ((missing, "SMTP_CA_FILE: no such file"), (garbage, "SMTP_CA_FILE: not a PEM file")):
        with pytest.raises(ConfigError) as error:
            load_settings(env={**mail, "SMTP_CA_FILE": str(path)}, env_file=None)
        assert any(line.startswith(problem) for line in error.value.problems), error.value.problems
    settings: Settings = load_settings(env={**mail, "SMTP_CA_FILE": str(pki.ca_file)}, env_file=None)
    assert settings.smtp_ca_file == pki.ca_file
