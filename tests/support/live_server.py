"""``library-api serve`` as a real process on a loopback port of its own, with its log captured for inspection.

The port is a listening socket bound here and handed down (``serve --fd``): it is known before the process
starts, nothing else can take it, and the readiness probe can only be answered by this server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.cli import invoke
from tests.support.measure import unmeasured
from tests.support.polling import wait_answering, wait_for
from tests.support.ports import listening_socket, port_of

CLI = Path(sys.executable).with_name("library-api")


class LiveServer:
    """One ``serve`` process; ``env`` holds its settings (as the environment of a deployment would).

    ``measured=False``: coverage does not measure the process (see :func:`tests.support.processes.start_server`).
    """

    def __init__(self, env: Mapping[str, str], *, workers: int = 1, measured: bool = True) -> None:
        self.listener = listening_socket()
        self.port = port_of(self.listener)
        self.workers = workers
        self.directory = Path(tempfile.mkdtemp(prefix="library-live-"))
        self.log_path = self.directory / "server.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "LIBRARY_API_"))},
            "LOG_FORMAT": "json",
            "PASSWORD_HASH_TIME_COST": "1",
            "PASSWORD_HASH_MEMORY_KIB": "1024",
            "PASSWORD_HASH_PARALLELISM": "1",
            "SEED_SAMPLE_ON_EMPTY": "false",
            "UPLOAD_DIR": str(self.directory / "uploads"),
            **env,
        }
        if not measured:  # only serves a client under test; what it runs is covered elsewhere (tests.support.measure)
            self.env = unmeasured(self.env)
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: str = "/health", timeout: float = 60) -> LiveServer:
        """Start the process and wait until ``wait`` answers 200 (again on the same port after a :meth:`stop`)."""
        if self.listener.fileno() == -1:  # handed to an earlier process, which has let go of the port
            self.listener = listening_socket(port=self.port)
        fd = self.listener.fileno()
        command = [str(CLI), "--env-file", str(self.directory / "none.env"), "serve"]
        command += ["--fd", str(fd), "--workers", str(self.workers)]
        with self.log_path.open("ab") as log, self.listener:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory, pass_fds=(fd,)
            )
        try:
            wait_answering(self.base_url + wait, self.process, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.log_text()[-4000:]}") from None
        return self

    def run_cli(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """Run another ``library-api`` command (``migrate``, ``users create``) with this server's settings."""
        return invoke(["--env-file", str(self.directory / "none.env"), *arguments], self.env)

    def stop(self) -> bool:
        """SIGTERM and wait; whether the server shut down cleanly.

        Uvicorn re-raises the signal it caught once shutdown is complete, so a clean single-process exit is
        "killed by SIGTERM" after "Application shutdown complete"; a supervisor of workers exits with 0.
        """
        self.listener.close()  # a server stopped before it started: the port is let go of here
        if self.process is None:
            return True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        code = self.process.returncode
        self.process = None
        return code == 0 or (code == -signal.SIGTERM and "Application shutdown complete" in self.log_text())

    def log_text(self) -> str:
        """Everything the process wrote so far."""
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
