"""SMTP servers for the mail tests: aiosmtpd's threaded controller on a socket the test bound beforehand.

:class:`SmtpServer` with an :class:`Inbox` is the mail tests' server (plain SMTP, or STARTTLS required);
:class:`SocketController` serves any other aiosmtpd handler.

aiosmtpd binds ``hostname:port`` itself, which would need a port chosen in advance (a bind-then-close race). Here
the test binds port 0 first (:func:`tests.support.ports.reserved_socket`: refused until it listens, no one else's
meanwhile) and the controller serves on that socket through its documented ``_create_server`` extension point.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from tests.support.ports import port_of, reserved_socket


class SocketController(Controller):  # type: ignore[misc]
    """aiosmtpd's threaded controller serving on ``sock`` (listening from :meth:`start` on); options as Controller's.

    Stopping it closes every connection it still holds before its loop ends. aiosmtpd's own stop only cancels the
    loop's tasks: a connection whose client had not finished yet (a QUIT and the TLS shutdown after it run past a
    test's last assertion) would be left open on a closed loop, and its transport would warn (``ResourceWarning``,
    an error here) whenever the garbage collector reached it, in whichever later test that happened.
    """

    #: Bounds the wait for the server's thread to close the connections (one turn of its loop).
    CLOSE_TIMEOUT = 30.0

    def __init__(self, handler: Any, sock: socket.socket, **options: Any) -> None:
        self.sock = sock
        self.sessions: list[TrackedSession] = []
        super().__init__(handler, hostname="127.0.0.1", port=port_of(sock), **options)

    def _create_server(self) -> Any:
        """Serve on the socket given (implicit TLS when ``ssl_context`` was given)."""
        self.sock.listen()
        return self.loop.create_server(self._factory_invoker, sock=self.sock, ssl=self.ssl_context)

    def factory(self) -> SMTP:
        """aiosmtpd's protocol for one connection, remembered so that :meth:`stop` can close it."""
        session = TrackedSession(self.handler, **self.SMTP_kwargs)
        self.sessions.append(session)
        return session

    def stop(self, no_assert: bool = False) -> None:
        """Close the connections still open, then stop as aiosmtpd does (its loop, its tasks, its thread)."""
        if self._thread is not None and self._thread.is_alive():
            closing = asyncio.run_coroutine_threadsafe(self._close_connections(), self.loop)
            closing.result(timeout=self.CLOSE_TIMEOUT)
        super().stop(no_assert)

    async def _close_connections(self) -> None:
        """Abort every connection whose socket is still open and wait until the loop has closed those sockets."""
        open_sockets = []
        for session in self.sessions:
            if session.connection is not None and session.socket is not None and session.socket.fileno() != -1:
                open_sockets.append(session.socket)
                # The socket's own transport, under any TLS layer: its abort closes the socket in the loop's next
                # turn and marks the TLS transport above it closed too.
                session.connection.abort()
        self.sessions.clear()
        # Each abort scheduled its socket's close with call_soon; callbacks run in order, so once this one has run,
        # so have they.
        loop = asyncio.get_running_loop()
        closed = loop.create_future()
        loop.call_soon(closed.set_result, None)
        await closed
        still_open = [sock for sock in open_sockets if sock.fileno() != -1]
        assert not still_open, f"aborted SMTP connections still open: {still_open}"


class TrackedSession(SMTP):
    """aiosmtpd's SMTP protocol, keeping the transport and socket of its connection as they were at the start.

    After STARTTLS aiosmtpd's own ``transport`` is the TLS layer, which may already have dropped its link to the
    socket below while that socket waits for the client's TLS shutdown; and with implicit TLS even the first
    transport is a TLS layer, so the socket is read once, at the start, while the link is there.
    """

    connection: asyncio.Transport | None = None
    socket: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.connection is None:
            assert isinstance(transport, asyncio.Transport)
            self.connection = transport
            self.socket = transport.get_extra_info("socket")
        super().connection_made(transport)


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
        self.listener.close()
