"""Ports for the servers tests start, safe when several test processes (xdist workers, other checkouts) run at once.

Choosing a free port by binding it, closing it and letting a child bind it later is a race: between the close
and the child's bind, anything else may take the port, and a readiness probe may then be answered by a stranger.
Three tools replace it:

* :func:`listening_socket` for our own Python servers (``library-api serve --fd``, Uvicorn ``--fd``/``sockets``,
  Gunicorn ``fd://``): the test binds port 0 and listens, the child inherits the socket (``pass_fds``). The port
  is never free, and nothing but the child can answer on it, so a readiness probe is unambiguous.
* :func:`refused_port` for "nothing listens here" tests: a bound socket that never listens keeps the port
  reserved (no one else can bind it) while every connection to it is refused.
* :func:`service_port` and :func:`listens` for servers that cannot inherit a socket (nginx, Prometheus,
  ``redis-server``, PostgreSQL): ports come from a range of this xdist worker's own (disjoint from every other
  worker's and below the kernel's ephemeral range, where the kernel picks ports for port 0 and outgoing
  connections); the caller retries with the next port when the server reports the address in use (another test
  run on the machine may use the same range), and readiness checks that the listening socket on the port belongs
  to the child it started (through ``/proc``), not merely that something answers.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

SERVICE_PORT_BASE = 20000
"""First port of the ranges handed to servers that cannot inherit a socket."""
SERVICE_PORT_BLOCK = 250
"""Ports per xdist worker: 48 workers fit below 32000, under Linux's default ephemeral range (32768-60999)."""
MAX_WORKERS = 48

ADDRESS_IN_USE = "address already in use"
"""How nginx, Prometheus, redis-server and PostgreSQL all word a failed bind (compare in lower case)."""

_reserved: list[socket.socket] = []
_counter = itertools.count()


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to a port the kernel chose on ``host``, listening, for a child process to serve on.

    Pass ``sock.fileno()`` in ``pass_fds`` (and as ``--fd``); the child's copy keeps the port for as long as it
    runs, so the parent may close its own copy once the child has started. ``port`` binds a given port again
    (a server restarted where its clients expect it), which fails if anything else took it meanwhile.

    ``SO_REUSEADDR`` is set on every such socket, not only on a rebinding one: the connections a server accepted
    inherit the flag from its listening socket, and Linux lets a restart bind the port while the old server's
    closed connections linger (``TIME-WAIT``, or ``FIN-WAIT-2`` while a browser still holds its end of a
    keep-alive connection) only if those connections carry the flag too. It never lets two sockets listen on one
    port, so a port another process listens on still cannot be taken.
    """
    sock = _tcp_socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(socket.SOMAXCONN)
    return sock


def port_of(sock: socket.socket) -> int:
    """The port ``sock`` is bound to."""
    return int(sock.getsockname()[1])


def reserved_socket() -> socket.socket:
    """A TCP socket bound to a loopback port the kernel chose, not listening: connections to it are refused until
    it listens, and nothing else can bind the port meanwhile (an in-process server that starts "later")."""
    sock = _tcp_socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _tcp_socket() -> socket.socket:
    """An IPv4 TCP socket that says it is TCP (``IPPROTO_TCP``, not 0).

    asyncio switches Nagle's algorithm off (``TCP_NODELAY``) only on connections whose socket says so, and an
    accepted connection inherits the protocol number of the listening socket: an in-process server on a socket
    made with protocol 0 would hold back small writes (WebSocket frames) until the peer's delayed ACK.
    """
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)


def refused_port() -> int:
    """A loopback port on which every connection is refused, and which nothing else can bind, for this process's life.

    The socket is bound but never listens; it is kept (a few descriptors per test session) so that the port stays
    reserved for as long as any test may still connect to it.
    """
    sock = reserved_socket()
    _reserved.append(sock)
    return port_of(sock)


def in_xdist() -> bool:
    """Whether this process is an xdist worker."""
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


def worker_index() -> int:
    """This xdist worker's number (``gw3`` is 3); 0 outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    number = name.removeprefix("gw")
    return int(number) % MAX_WORKERS if number.isdigit() else 0


def service_port() -> int:
    """The next port of this worker's range that nothing is bound to right now (a hint, not a reservation).

    The walk starts at an offset taken from the process id, so that two test runs on one machine (two checkouts)
    rarely walk the same ports in step; a server that still finds its port taken is started again on the next one.
    """
    base = SERVICE_PORT_BASE + worker_index() * SERVICE_PORT_BLOCK
    offset = os.getpid() % SERVICE_PORT_BLOCK
    for _ in range(SERVICE_PORT_BLOCK):
        port = base + (offset + next(_counter)) % SERVICE_PORT_BLOCK
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in {base}-{base + SERVICE_PORT_BLOCK - 1}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_on_service_port(start: Callable[[int], bool], what: str, attempts: int = 5) -> int:
    """Call ``start(port)`` with ports from :func:`service_port` until it returns True; the port it started on.

    ``start`` returns False when its server could not bind the port (it found the address in use) and has exited;
    any other failure it raises.
    """
    tried = []
    for _ in range(attempts):
        port = service_port()
        tried.append(port)
        if start(port):
            return port
    raise RuntimeError(f"{what} found every port it tried in use: {tried}")


def said_address_in_use(log: Path | str) -> bool:
    """Whether a server's log (a file, or its text) reports a failed bind."""
    text = log.read_text(errors="replace") if isinstance(log, Path) else log
    return ADDRESS_IN_USE in text.lower()


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on 127.0.0.1:``port`` (``/proc/net/tcp``, state 0A is LISTEN)."""
    local = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":
            inodes.add(fields[9])
    return inodes


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on 127.0.0.1:``port`` (not just any process)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{descriptor}") in wanted:
                return True
        except OSError:
            continue
    return False


def wait_listening(
    pid: Callable[[], int | None], port: int, alive: Callable[[], bool], within: float, what: str
) -> bool:
    """Wait until the process ``pid()`` names listens on ``port``: True then, False if it stopped being ``alive()``.

    ``pid`` is a callable because some servers write their process id only once started (PostgreSQL's
    ``postmaster.pid``). Fails with ``what`` when ``within`` seconds pass first.
    """
    deadline = time.monotonic() + within
    while True:
        current = pid()
        if current is not None and listens(current, port):
            return True
        if not alive():
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:.0f} s waiting for {what} to listen on port {port}")
        time.sleep(0.05)


def process_listens(process: subprocess.Popen[bytes], port: int, within: float, what: str) -> bool:
    """Wait until ``process`` listens on ``port``: True then, False if it exits first (see :func:`wait_listening`)."""
    return wait_listening(lambda: process.pid, port, lambda: process.poll() is None, within, what)
