"""Docker for the image tests: the real daemon, the image built from the repository's Dockerfile, and containers.

The image is built the way users build it (``docker build`` of the repository on ``debian:bookworm-slim``), with
the built-in Dockerfile frontend of the daemon. When the base is missing it is made from Debian's packages by
``scripts/base-image.sh`` (no image registry is reachable on these machines). Builds on a machine whose downloads
pass a TLS-inspecting proxy get the machine's CA bundle as the ``ca`` build secret, as the docs tell users to do.

Containers run the way production runs them: the image's own user, a read-only root file system, every
capability dropped, ``no-new-privileges``, a tmpfs for ``/tmp``; host networking, so they reach this machine's
PostgreSQL and Redis on 127.0.0.1 and serve on a free loopback port.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.support import ROOT, tool
from tests.support.services import unavailable

BASE_IMAGE = "debian:bookworm-slim"
IMAGE_TAG = "library-api:tests"
UID = 10001

LOCKED_DOWN = (
    "--network=host",
    "--read-only",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--tmpfs=/tmp:rw,nosuid,nodev,noexec,size=64m",
)
"""How production runs the image (Compose and Kubernetes set the same), on host networking for the tests."""


@dataclass(frozen=True)
class Docker:
    """The ``docker`` command-line client of a daemon that answers."""

    binary: str

    def __call__(
        self, *arguments: str, timeout: float = 120, check: bool = True, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGUMENTS``; with ``check``, a non-zero exit fails the test with the output."""
        result = subprocess.run(
            [self.binary, *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=None if env is None else {**os.environ, **env},
        )
        if check:
            assert result.returncode == 0, f"docker {' '.join(arguments)}:\n{result.stdout}{result.stderr}"
        return result

    def inspect(self, name: str, template: str) -> str:
        """One value of ``docker inspect`` for a container or image."""
        return self("inspect", "--format", template, name).stdout.strip()


def find_docker() -> Docker:
    """Debian's Docker client, once its daemon answers; skip (fail under CI=true) otherwise."""
    docker = Docker(tool("docker"))
    info = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    if info.returncode != 0:
        unavailable(f"the Docker daemon does not answer (.ci/run starts it): {info.stderr.strip()}")
    return docker


def ca_bundle() -> Path | None:
    """The CA bundle this machine's downloads trust when it names one (a TLS-inspecting proxy's CA is in it)."""
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT"):
        value = os.environ.get(name, "").strip()
        if value and Path(value).is_file():
            return Path(value)
    return None


def ensure_base_image(docker: Docker) -> None:
    """The base image, made from Debian's packages when the daemon does not have it (no registry here)."""
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return
    made = subprocess.run(
        [str(ROOT / "scripts" / "base-image.sh"), BASE_IMAGE], capture_output=True, text=True, timeout=900, check=False
    )
    if made.returncode != 0:
        unavailable(f"{BASE_IMAGE} is missing and scripts/base-image.sh could not make it: {made.stderr.strip()}")


def build_image(docker: Docker, tag: str = IMAGE_TAG) -> str:
    """``docker build`` of the repository, as documented; returns the tag."""
    ensure_base_image(docker)
    command = ["build", "--network=host", "--tag", tag]
    bundle = ca_bundle()
    if bundle is not None:
        command += ["--secret", f"id=ca,src={bundle}"]
    docker(*command, str(ROOT), timeout=1200, env={"DOCKER_BUILDKIT": "1"})
    return tag


@dataclass
class Container:
    """A running container of the image and the loopback port it serves on."""

    docker: Docker
    name: str
    port: int

    def logs(self) -> str:
        """Everything the container wrote (stdout and stderr)."""
        result = self.docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def records(self) -> list[dict[str, Any]]:
        """The container's JSON log lines, parsed; a line that is not JSON is kept as an ``unparsed`` record."""
        found = []
        for line in self.logs().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                found.append({"level": "unparsed", "message": line})
        return found

    def health(self) -> str:
        """Docker's verdict from the image's HEALTHCHECK: starting, healthy or unhealthy."""
        return self.docker.inspect(self.name, "{{.State.Health.Status}}")

    def running(self) -> bool:
        """Whether the container's main process is still running."""
        return self.docker.inspect(self.name, "{{.State.Running}}") == "true"

    def wait_healthy(self, timeout: float = 120) -> None:
        """Poll the health status until Docker says healthy; fail with the log when it stops or never does."""
        deadline = time.monotonic() + timeout
        while (status := self.health()) != "healthy":
            assert self.running(), f"the container stopped:\n{self.logs()}"
            assert status != "unhealthy", f"unhealthy: {self.health_log()}\n{self.logs()}"
            assert time.monotonic() < deadline, f"not healthy within {timeout} s: {self.health_log()}\n{self.logs()}"
            time.sleep(0.2)

    def health_log(self) -> str:
        """The last outputs of the HEALTHCHECK command."""
        return self.docker.inspect(self.name, "{{json .State.Health.Log}}")

    def exec(self, *command: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container as its user (never raising on a non-zero exit)."""
        options = [f"--env={key}={value}" for key, value in (env or {}).items()]
        return self.docker("exec", *options, self.name, *command, check=False)

    def remove(self) -> None:
        """Stop and remove the container at once (its checks are done)."""
        self.docker("rm", "--force", self.name, check=False)

    def exit_code(self) -> int:
        """The exit status of a stopped container."""
        return int(self.docker.inspect(self.name, "{{.State.ExitCode}}"))


def run_once(docker: Docker, image: str, env: Mapping[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    """``docker run --rm`` of a one-off command (e.g. ``library-api migrate``), locked down like the service."""
    variables = [f"--env={key}={value}" for key, value in env.items()]
    return docker("run", "--rm", *LOCKED_DOWN, *variables, image, *command, check=False, timeout=300)


@contextmanager
def service(
    docker: Docker, image: str, env: Mapping[str, str], port: int, *, options: Sequence[str] = ()
) -> Iterator[Container]:
    """The image's default command in a locked-down container, removed on the way out.

    The health check runs every second (the image's 30 s would make the tests wait); otherwise the image's
    settings apply, its user included.
    """
    name = f"library-api-test-{uuid.uuid4().hex[:10]}"
    variables = [f"--env={key}={value}" for key, value in {**env, "PORT": str(port)}.items()]
    docker("run", "--detach", "--name", name, *LOCKED_DOWN, "--health-interval=1s", *options, *variables, image)
    try:
        yield Container(docker, name, port)
    finally:
        docker("rm", "--force", name, check=False)
