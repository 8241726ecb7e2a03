"""Real server processes on loopback: start ``library-api serve``, wait until it answers, stop it with a signal.

The server serves on a listening socket this process binds (port 0) and hands down (``serve --fd``), so the
port is known before the child starts, nothing else can take it, and whatever answers on it is this child.
With ``bind_itself`` (what ``--reload`` needs, and how one test per adapter keeps binding covered) the server
binds port 0 itself and the port is read from the line where it reports it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.measure import unmeasured
from tests.support.polling import wait_answering, wait_for
from tests.support.ports import listening_socket, port_of

TEST_ENVIRONMENT = {
    "PASSWORD_HASH_TIME_COST": "1",
    "PASSWORD_HASH_MEMORY_KIB": "1024",
    "PASSWORD_HASH_PARALLELISM": "1",
    "SEED_SAMPLE_ON_EMPTY": "false",
    "LOG_LEVEL": "INFO",
}

REPORTED_PORT = re.compile(r"running on https?://127\.0\.0\.1:(\d+)")
"""How Uvicorn ("Uvicorn running on ...") and the Hypercorn adapter ("hypercorn running on ...") report their port."""


@dataclass
class ServerProcess:
    """A ``library-api serve`` child process and the base URL it listens on.

    ``base_url`` ends in ``:0`` until :meth:`wait_ready` has read the port from the log of a server that bound
    port 0 itself.
    """

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    _closed: bool = field(default=False)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _learn_port(self) -> bool:
        """Whether the port is known (read from the server's report when it bound port 0 itself)."""
        if not self.base_url.endswith(":0"):
            return True
        found = REPORTED_PORT.search(self.log())
        if found is not None:
            self.base_url = self.base_url.removesuffix("0") + found.group(1)
        return found is not None

    def wait_ready(
        self, path: str = "/health/ready", timeout: float = 120.0, verify: ssl.SSLContext | bool = True
    ) -> None:
        """Wait until ``path`` answers 200 from this very process (``verify``: a TLS client); fail with its log when
        it exits or ``timeout`` passes first (:func:`tests.support.polling.wait_answering`)."""
        try:
            wait_for(self._learn_port, timeout, "the server to report its port")
            wait_answering(self.base_url + path, self.process, timeout, verify)
        except AssertionError as exc:
            raise AssertionError(f"server not ready ({exc}):\n{self.log()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server ignored {sig!r} for {timeout} s:\n{self.log()}") from None


def start_server(
    database_url: str,
    directory: Path,
    *,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    scheme: str = "http",
    bind_itself: bool = False,
    measured: bool = True,
) -> ServerProcess:
    """Start ``library-api serve`` on a socket of its own with ``directory`` as its working directory.

    ``bind_itself`` (implied by ``--reload``): the server binds port 0 on 127.0.0.1 and reports the port it got.
    ``measured=False``: coverage does not measure the server, for tests that use it only to serve traffic to a
    client under test, when what it runs is covered elsewhere (``tests.support.measure``).
    """
    if bind_itself or "--reload" in args:
        arguments = ("--host", "127.0.0.1", "--port", "0", *args)
        return _start(database_url, directory, arguments, env, scheme, None, measured=measured)
    with listening_socket() as listener:
        # The child holds the socket once started; this copy is closed, so the port closes when the child is gone.
        arguments = ("--fd", str(listener.fileno()), *args)
        return _start(database_url, directory, arguments, env, scheme, listener, measured=measured)


def _start(
    database_url: str,
    directory: Path,
    args: tuple[str, ...],
    env: Mapping[str, str] | None,
    scheme: str,
    listener: socket.socket | None,
    *,
    measured: bool,
) -> ServerProcess:
    port = port_of(listener) if listener is not None else 0
    environment = {**os.environ, **TEST_ENVIRONMENT, "DATABASE_URL": database_url, "UPLOAD_DIR": str(directory / "up")}
    environment.pop("LIBRARY_API_OVERRIDES", None)
    environment.update(env or {})
    if not measured:
        environment = unmeasured(environment)
    log_path = directory / f"server-{port or uuid.uuid4().hex[:8]}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "library_api", "serve", *args],
            cwd=directory,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),) if listener is not None else (),
        )
    return ServerProcess(process=process, base_url=f"{scheme}://127.0.0.1:{port}", log_path=log_path)
