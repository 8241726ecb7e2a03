"""SMTP servers for the mail tests: aiosmtpd's threaded controller on a socket the test bound beforehand.

:class:`SmtpServer` with an :class:`Inbox` is the mail tests' server (plain SMTP, or STARTTLS required);
:class:`SocketController` serves any other aiosmtpd handler.

aiosmtpd binds ``hostname:port`` itself, which would need a port chosen in advance (a bind-then-close race). Here
the test binds port 0 first (:func:`tests.support.ports.reserved_socket`: refused until it listens, no one else's
meanwhile) and the controller serves on that socket through its documented ``_create_server`` extension point.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.ports import port_of, reserved_socket


class SocketController(Controller):  # type: ignore[misc]
    """aiosmtpd's threaded controller serving on ``sock`` (listening from :meth:`start` on); options as Controller's."""

    def __init__(self, handler: Any, sock: socket.socket, **options: Any) -> None:
        self.sock = sock
        super().__init__(handler, hostname="127.0.0.1", port=port_of(sock), **options)

    def _create_server(self) -> Any:
        """Serve on the socket given (implicit TLS when ``ssl_context`` was given)."""
        self.sock.listen()
        return self.loop.create_server(self._factory_invoker, sock=self.sock, ssl=self.ssl_context)


@dataclass
class Inbox:
    """An SMTP server's behaviour and what it accepted: the first ``refusals`` deliveries get ``refusal``.

    A message is accepted only once ``gate`` is open (it is, unless a test closes it): a closed gate holds the
    delivery in the middle of its DATA command, for as long as the test wants.
    """

    refusals: int = 0
    refusal: str = "451 4.3.0 try again later"
    gate: threading.Event = field(default_factory=threading.Event)
    messages: list[Message] = field(default_factory=list)
    attempts: int = 0
    encrypted: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gate.set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.attempts += 1
        self.encrypted.append(server.transport.get_extra_info("ssl_object") is not None)
        if self.refusals:
            self.refusals -= 1
            return self.refusal
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 60)
        self.messages.append(message_from_bytes(envelope.content))
        return "250 2.0.0 accepted"


@dataclass
class SmtpServer:
    """An SMTP server on loopback delivering to ``inbox``: plain SMTP, or with ``starttls`` (a server context)
    STARTTLS required before it takes any mail.

    Its port is reserved from the start: refused until :meth:`start`, and no one else's meanwhile.
    """

    inbox: Inbox
    starttls: ssl.SSLContext | None = None
    listener: socket.socket = field(default_factory=reserved_socket)
    controller: Controller | None = None

    @property
    def port(self) -> int:
        return port_of(self.listener)

    def start(self) -> None:
        options: dict[str, Any] = {}
        if self.starttls is not None:
            options.update(tls_context=self.starttls, require_starttls=True)
        self.controller = SocketController(self.inbox, self.listener, **options)
        self.controller.start()

    def stop(self) -> None:
        self.inbox.gate.set()  # a held delivery must not keep the server's thread from stopping
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
        if self.starttls is not None:
            # Stopping the server's loop abandons the TLS connections it was still closing (a client's QUIT and the
            # TLS shutdown that follows run past the last assertion); finalise them here, not in a later test. A
            # plain server leaves none, and pays for no full collection.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
        self.listener.close()
