"""The mail tests' SMTP server: stopping it closes the connections it still holds, TLS ones included.

A connection left open on the server's stopped loop would be finalised by the garbage collector in whichever later
test it reached, with a ``ResourceWarning`` (an error in this suite) in that test; and a full collection in the
server's tear-down to avoid that once hung a run.
"""

from __future__ import annotations

import gc
import smtplib
import socket
import ssl
import warnings

from tests.support.certs import ServerTls
from tests.support.smtp import Inbox, SmtpServer

#: Bounds the client's wait for the server's close, which normally arrives at once.
CLIENT_TIMEOUT = 30


def unclosed_resource_warnings() -> list[str]:
    """Collect garbage now and return the ``ResourceWarning`` messages finalisers gave on the way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    return [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)]


def end_of_stream(sock: socket.socket) -> bool:
    """Whether reading ``sock`` finds the peer gone (an empty read, or TLS's report of an end without goodbye)."""
    try:
        return sock.recv(1) == b""
    except ssl.SSLError as error:
        return "EOF" in str(error)


def test_stopping_closes_a_connection_in_the_middle_of_a_tls_session(tls: ServerTls) -> None:
    server = SmtpServer(inbox=Inbox(), starttls=tls.server_context)
    server.start()
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
    try:
        client.ehlo()
        client.starttls(context=ssl.create_default_context(cafile=tls.ca_file))
        client.ehlo()
        unclosed_resource_warnings()  # what earlier tests left, not this server's

        server.stop()  # no QUIT: the client is still connected

        # The server closed the TCP connection without a TLS goodbye: the client reads the end of the stream.
        assert client.sock is not None
        assert end_of_stream(client.sock)
        assert unclosed_resource_warnings() == []
    finally:
        client.close()


def test_stopping_closes_a_plain_connection() -> None:
    server = SmtpServer(inbox=Inbox())
    server.start()
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
    try:
        client.ehlo()
        unclosed_resource_warnings()

        server.stop()

        assert client.sock is not None
        assert end_of_stream(client.sock)
        assert unclosed_resource_warnings() == []
    finally:
        client.close()
