"""A listening socket handed down by the parent process: ``library-api serve --fd N``.

Whoever starts the server may bind the port itself and pass the listening socket on as an open file descriptor
(systemd socket activation, a process manager, a test harness). The port is then never free between being
chosen and being bound, so nothing else can take it in between, and nothing but this server can answer on it;
a parent that binds port 0 learns the port before the server even starts. Every server adapter serves on the
given socket instead of binding ``HOST:PORT``: Uvicorn's (one process or the worker supervisor), Hypercorn's
and Gunicorn's (as ``fd://N``).

The descriptor is checked before anything starts, like the rest of the configuration: it must be an open,
listening TCP socket (IPv4 or IPv6).
"""

from __future__ import annotations

import socket


class ListenerError(ValueError):
    """The descriptor given with ``--fd`` cannot be served on; the message is one readable line."""


def inherited_listener(fd: int) -> socket.socket:
    """The listening TCP socket open on descriptor ``fd``; raises :class:`ListenerError` when it is not one."""
    if fd < 0:
        raise ListenerError(f"--fd {fd}: a file descriptor is a number from 0 up")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ListenerError(f"--fd {fd}: not an open socket ({exc.strerror or exc})") from None
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        sock.detach()  # not ours to close: the parent gave it for something else
        raise ListenerError(f"--fd {fd}: not a TCP socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ListenerError(f"--fd {fd}: the socket is not listening (bind it and call listen() first)")
    return sock


def address_of(sock: socket.socket) -> str:
    """``host:port`` (``[host]:port`` for IPv6) that ``sock`` is bound to, for logs and Gunicorn-style messages."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
