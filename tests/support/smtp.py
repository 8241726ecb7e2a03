"""SMTP servers for the mail tests: aiosmtpd's threaded controller on a socket the test bound beforehand.

aiosmtpd binds ``hostname:port`` itself, which would need a port chosen in advance (a bind-then-close race). Here
the test binds port 0 first (:func:`tests.support.ports.reserved_socket`: refused until it listens, no one else's
meanwhile) and the controller serves on that socket through its documented ``_create_server`` extension point.
"""

from __future__ import annotations

import socket
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.ports import port_of


class SocketController(Controller):  # type: ignore[misc]
    """aiosmtpd's threaded controller serving on ``sock`` (listening from :meth:`start` on); options as Controller's."""

    def __init__(self, handler: Any, sock: socket.socket, **options: Any) -> None:
        self.sock = sock
        super().__init__(handler, hostname="127.0.0.1", port=port_of(sock), **options)

    def _create_server(self) -> Any:
        """Serve on the socket given (implicit TLS when ``ssl_context`` was given)."""
        self.sock.listen()
        return self.loop.create_server(self._factory_invoker, sock=self.sock, ssl=self.ssl_context)
