"""Measure the image for docs/deployment.md: build times (cold and warm), size, and how long ``docker stop`` takes.

Usage (Docker running, the base present or ``--base`` to time making it)::

    .venv/bin/python scripts/measure_image.py [--base] [--no-cold]

The builds run on a clean export of ``HEAD`` (``git archive``), so the working tree is never touched; ``--base``
also times ``scripts/base-image.sh`` on a throw-away tag. A cold build starts with an empty build cache
(``docker builder prune``), so every package is downloaded again. ``docker stop`` is timed on the embedded
default (SQLite on the container's tmpfs, anonymous WebSockets allowed: development settings, so that nothing
but Docker is needed) for an idle container, a container with a WebSocket client that leaves when told, and one
whose client stays until the drain's deadline. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[1]
TAG = "library-api:measure"
DRAIN_SECONDS = 10
DOCKER = shutil.which("docker", path="/usr/bin:/bin") or "docker"


def docker(*arguments: str, env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    """Run ``docker ARGUMENTS``, failing loudly, and return its standard output."""
    result = subprocess.run(
        [DOCKER, *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise SystemExit(f"docker {' '.join(arguments)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` took."""
    started = time.monotonic()
    action()
    return time.monotonic() - started


def ca_secret() -> list[str]:
    """The ``ca`` build secret when this machine names a CA bundle (see docs/deployment.md)."""
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT"):
        value = os.environ.get(name, "")
        if value and Path(value).is_file():
            return ["--secret", f"id=ca,src={value}"]
    return []


def build(context: Path, *extra: str) -> None:
    """``docker build`` as documented (host networking: these machines' daemons have no bridge)."""
    docker("build", "--network=host", *ca_secret(), *extra, "--tag", TAG, str(context), env={"DOCKER_BUILDKIT": "1"})


def export_head(directory: Path) -> Path:
    """A clean copy of ``HEAD`` to build from."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_container(port: int) -> str:
    """The image on the embedded default, locked down, on host networking; returns once it is ready."""
    name = f"library-api-measure-{uuid.uuid4().hex[:8]}"
    settings = {
        "ENVIRONMENT": "development",
        "LOG_FORMAT": "json",
        "DATABASE_URL": "sqlite+aiosqlite:////tmp/library.db",
        "AUTO_MIGRATE": "true",
        "SEED_SAMPLE_ON_EMPTY": "false",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "WS_ALLOW_ANONYMOUS": "true",
        "BROADCAST_INTERVAL": "0",
        "SHUTDOWN_TIMEOUT": str(DRAIN_SECONDS),
    }
    variables = [f"--env={key}={value}" for key, value in settings.items()]
    docker(
        "run",
        "--detach",
        "--name",
        name,
        "--network=host",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--tmpfs=/tmp",
        *variables,
        TAG,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return name
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(docker("logs", name))
        time.sleep(0.1)


def stop_seconds(client: str | None) -> float:
    """``docker stop`` of a fresh container: idle, or with one client that ``leaves`` or ``stays``."""
    port = free_port()
    name = start_container(port)
    try:
        if client is None:
            return timed(lambda: docker("stop", "--time", str(DRAIN_SECONDS + 60), name))
        with connect(f"ws://127.0.0.1:{port}/ws/measure") as websocket:
            websocket.recv(timeout=30)
            stopping = threading.Thread(target=docker, args=("stop", "--time", str(DRAIN_SECONDS + 60), name))
            started = time.monotonic()
            stopping.start()
            try:
                while True:
                    message = json.loads(websocket.recv(timeout=DRAIN_SECONDS + 30))
                    if message["type"] == "shutdown" and client == "leaves":
                        websocket.close()
                        break
            except ConnectionClosed:
                pass
            stopping.join()
            return time.monotonic() - started
    finally:
        docker("rm", "--force", name)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", action="store_true", help="also time scripts/base-image.sh")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold build (keeps the build cache)")
    options = parser.parse_args()
    rows: list[tuple[str, str]] = []
    if options.base:
        base = "library-api-measure/debian:bookworm-slim"
        seconds = timed(lambda: subprocess.run([str(ROOT / "scripts" / "base-image.sh"), base], check=True))
        rows.append(("base image made from Debian packages (scripts/base-image.sh)", f"{seconds:.0f} s"))
        docker("rmi", base)
    with tempfile.TemporaryDirectory() as directory:
        context = export_head(Path(directory))
        if not options.no_cold:
            docker("builder", "prune", "--all", "--force")
            rows.append(("cold build (empty build cache, base present)", f"{timed(lambda: build(context)):.0f} s"))
        rows.append(("warm build, nothing changed", f"{timed(lambda: build(context)):.1f} s"))
        init = context / "src" / "library_api" / "__init__.py"
        init.write_text(init.read_text() + "\n# changed\n")
        rows.append(("warm build, a source file changed", f"{timed(lambda: build(context)):.1f} s"))
    size = int(docker("image", "inspect", "--format", "{{.Size}}", TAG).strip())
    rows.append(("image size (uncompressed)", f"{size / 1e6:.0f} MB"))
    idle = [stop_seconds(None) for _ in range(3)]
    rows.append(("`docker stop`, idle (median of 3)", f"{statistics.median(idle):.1f} s"))
    rows.append(("`docker stop`, one WebSocket client that leaves when told", f"{stop_seconds('leaves'):.1f} s"))
    rows.append(
        (f"`docker stop`, one client that stays (SHUTDOWN_TIMEOUT={DRAIN_SECONDS})", f"{stop_seconds('stays'):.1f} s")
    )
    print("| Measure | Value |\n| --- | --- |")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
