"""Real server processes on loopback: start ``library-api serve``, wait until it answers, stop it with a signal."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.services import free_port

TEST_ENVIRONMENT = {
    "PASSWORD_HASH_TIME_COST": "1",
    "PASSWORD_HASH_MEMORY_KIB": "1024",
    "PASSWORD_HASH_PARALLELISM": "1",
    "SEED_SAMPLE_ON_EMPTY": "false",
    "LOG_LEVEL": "INFO",
}


@dataclass
class ServerProcess:
    """A ``library-api serve`` child process and the base URL it listens on."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    _closed: bool = field(default=False)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(
        self, path: str = "/health/ready", timeout: float = 120.0, verify: ssl.SSLContext | bool = True
    ) -> None:
        """Poll until ``path`` answers 200, the process dies, or ``timeout`` passes (``verify``: a TLS client)."""
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                response = httpx.get(self.base_url + path, timeout=2.0, verify=verify)
                if response.status_code == 200:
                    return
                last_error = f"status {response.status_code}"
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout} s ({last_error}):\n{self.log()}")

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
) -> ServerProcess:
    """Start ``library-api serve`` on a free port with ``directory`` as its working directory."""
    port = free_port()
    environment = {**os.environ, **TEST_ENVIRONMENT, "DATABASE_URL": database_url, "UPLOAD_DIR": str(directory / "up")}
    environment.pop("LIBRARY_API_OVERRIDES", None)
    environment.update(env or {})
    log_path = directory / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "library_api", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=directory,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(process=process, base_url=f"{scheme}://127.0.0.1:{port}", log_path=log_path)
