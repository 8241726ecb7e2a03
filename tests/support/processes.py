"""``library-api serve`` as a real process on loopback: started, waited on until it answers, stopped with a signal.

:class:`ServerProcess` is the one wrapper of every server process a test starts. The server serves on a listening
socket this process binds (port 0) and hands down (``serve --fd``): the port is known before the child starts,
nothing else can take it, and whatever answers on it is this child. After a stop the same port is bound again, so
a server restarts where its clients expect it. With ``bind_itself`` (what ``--reload`` needs, and how one test per
adapter keeps binding covered) the server binds port 0 itself and the port is read from the line where it reports
it.

Its settings are its environment, as a deployment's would be: this process's environment without the settings of
the test process (``DATABASE_*``, ``REDIS_*``, ``LIBRARY_API_*``), cheap hashing (:data:`TEST_ENVIRONMENT`),
an upload directory of its own, and what the test gives. Its output is captured in a log file, read as text or,
with ``json_log``, as JSON records.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.support.cli import SETTING_PREFIXES, invoke
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


class ServerProcess:
    """One ``library-api serve`` process, started (and started again) by :meth:`start`, and the URL it answers on.

    ``env`` holds its settings; ``database_url`` is a shorthand for ``DATABASE_URL``. ``directory`` is its working
    directory (a new temporary one by default), which holds its log and uploads. ``args`` are more ``serve``
    options; ``workers`` adds ``--workers``. ``scheme`` is the base URL's (``https`` for a server with TLS on).
    ``bind_itself`` (implied by ``--reload``): the server binds port 0 on 127.0.0.1 and reports the port it got;
    ``base_url`` ends in ``:0`` until :meth:`wait_ready` has read it. ``measured=False``: coverage does not measure
    the server, for tests that use it only to serve traffic to a client under test, when what it runs is covered
    elsewhere (``tests.support.measure``). ``json_log``: the server logs JSON lines (:meth:`log_records`).
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        database_url: str | None = None,
        directory: Path | None = None,
        args: tuple[str, ...] = (),
        workers: int | None = None,
        scheme: str = "http",
        bind_itself: bool = False,
        measured: bool = True,
        json_log: bool = False,
    ) -> None:
        own_directory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="library-live-")) if directory is None else directory
        self.args = args + (("--workers", str(workers)) if workers is not None else ())
        self.bind_itself = bind_itself or "--reload" in args
        self.listener = None if self.bind_itself else listening_socket()
        self.port = port_of(self.listener) if self.listener is not None else 0
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        name = "server.log" if own_directory else f"server-{self.port or uuid.uuid4().hex[:8]}.log"
        self.log_path = self.directory / name
        self.env = {
            **{key: value for key, value in os.environ.items() if not key.startswith(SETTING_PREFIXES)},
            **TEST_ENVIRONMENT,
            **({"LOG_FORMAT": "json"} if json_log else {}),
            **({"DATABASE_URL": database_url} if database_url is not None else {}),
            "UPLOAD_DIR": str(self.directory / "uploads"),
            **(env or {}),
        }
        if not measured:
            self.env = unmeasured(self.env)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> subprocess.Popen[bytes]:
        """The process of the current start (fails when the server is not started)."""
        assert self.process is not None, "the server is not started"
        return self.process

    def launch(self) -> ServerProcess:
        """Start the process without waiting for it (on the same port again after a :meth:`stop`)."""
        if self.bind_itself:
            arguments: tuple[str, ...] = ("--host", "127.0.0.1", "--port", "0")
            pass_fds: tuple[int, ...] = ()
        else:
            if self.listener is None or self.listener.fileno() == -1:  # handed to an earlier process, now let go of
                self.listener = listening_socket(port=self.port)
            arguments, pass_fds = ("--fd", str(self.listener.fileno())), (self.listener.fileno(),)
        command = [sys.executable, "-m", "library_api", "--env-file", str(self.directory / "none.env"), "serve"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, *arguments, *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                pass_fds=pass_fds,
            )
        if self.listener is not None:
            # The child holds the socket now; this copy is closed, so the port closes when the child is gone.
            self.listener.close()
        return self

    def start(
        self, *, wait: str = "/health", timeout: float = 60, verify: ssl.SSLContext | bool = True
    ) -> ServerProcess:
        """Start the process and wait until ``wait`` answers 200 (:meth:`launch`, then :meth:`wait_ready`)."""
        self.launch()
        self.wait_ready(wait, timeout, verify)
        return self

    def ws_url(self, client_id: str) -> str:
        """The WebSocket URL of ``client_id`` on this server."""
        return self.base_url.replace("http://", "ws://") + f"/ws/{client_id}"

    def _learn_port(self) -> bool:
        """Whether the port is known (read from the server's report when it bound port 0 itself)."""
        if not self.base_url.endswith(":0"):
            return True
        found = REPORTED_PORT.search(self.log_text())
        if found is not None:
            self.port = int(found.group(1))
            self.base_url = self.base_url.removesuffix("0") + found.group(1)
        return found is not None

    def wait_ready(
        self, path: str = "/health/ready", timeout: float = 120.0, verify: ssl.SSLContext | bool = True
    ) -> None:
        """Wait until ``path`` answers 200 from this very process (``verify``: a TLS client); fail with its log when
        it exits or ``timeout`` passes first (:func:`tests.support.polling.wait_answering`)."""
        try:
            wait_for(self._learn_port, timeout, "the server to report its port")
            wait_answering(self.base_url + path, self.running, timeout, verify)
        except AssertionError as exc:
            raise AssertionError(f"server not ready ({exc}):\n{self.log_text()[-8000:]}") from None

    def wait_for_log(self, fragment: str, count: int = 1, timeout: float = 120.0) -> None:
        """Wait until the log holds ``fragment`` ``count`` times or more (every worker's start-up line, say); fail
        with the log when the process exits or ``timeout`` passes first."""

        def written() -> bool:
            if self.running.poll() is not None:
                raise AssertionError(f"the server exited with {self.running.returncode} before logging {fragment!r}")
            return self.log_text().count(fragment) >= count

        try:
            wait_for(written, timeout, f"{fragment!r} {count} time(s) in the server's log")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.log_text()[-8000:]}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code; fail with the log when the server ignores it for ``timeout`` s."""
        process = self.running
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"server ignored {sig!r} for {timeout} s:\n{self.log_text()}") from None

    def stop_cleanly(self) -> bool:
        """SIGTERM and wait; whether the server shut down cleanly (one never started counts as clean).

        Uvicorn re-raises the signal it caught once shutdown is complete, so a clean single-process exit is
        "killed by SIGTERM" after "Application shutdown complete"; a supervisor of workers exits with 0.
        """
        if self.listener is not None:
            self.listener.close()  # a server stopped before it started: the port is let go of here
        if self.process is None:
            return True
        try:
            code = self.stop(signal.SIGTERM, timeout=60)
        except AssertionError:
            return False
        finally:
            self.process = None
        return code == 0 or (code == -signal.SIGTERM and "Application shutdown complete" in self.log_text())

    def run_cli(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """Run another ``library-api`` command (``migrate``, ``users create``) with this server's settings."""
        return invoke(["--env-file", str(self.directory / "none.env"), *arguments], self.env)

    def log_text(self) -> str:
        """Everything the process (every start of it) wrote so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines are skipped)."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records

    def access_records(self) -> list[dict[str, Any]]:
        """The access lines written so far."""
        return [record for record in self.log_records() if record.get("logger") == "library_api.access"]

    def wait_for_access(self, request_id: str, timeout: float = 10) -> dict[str, Any]:
        """The access line of the request with ``request_id`` (waiting until it is written)."""
        found: list[dict[str, Any]] = []

        def written() -> bool:
            found[:] = [r for r in self.access_records() if r.get("request_id") == request_id]
            return bool(found)

        wait_for(written, timeout, f"the access line of {request_id}")
        return found[0]


@asynccontextmanager
async def migrated_server(env: Mapping[str, str], *, workers: int | None = None) -> AsyncIterator[ServerProcess]:
    """A server with ``env`` as its settings and JSON logs, started once ``migrate`` has run on its database and
    ``/health`` answers; at the end of the block it must shut down cleanly (the set-up of the module-scoped
    servers of the multi-worker tests)."""
    server = ServerProcess(env, workers=workers, json_log=True)
    migrated = await asyncio.to_thread(server.run_cli, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    await asyncio.to_thread(server.start, timeout=180)  # a bound: several workers start on two busy cores
    yield server
    assert await asyncio.to_thread(server.stop_cleanly)
