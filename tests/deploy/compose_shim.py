"""Running ``deploy/deploy.sh`` with Compose on a machine that has no Docker engine.

The Docker engine and its Compose plugin cannot run on the test machines, so the tests put a stand-in ``docker``
first on ``PATH``. It stands in for the Compose CLI alone: it records every call (one JSON list per line), answers
``compose version`` and ``compose config``, accepts ``build``, ``up``, ``kill`` and ``logs`` without doing anything,
and runs what ``compose run`` and ``compose exec`` would run inside a container, the service's own command, here
for real (``library-api`` from this virtual environment, with the caller's environment as the container's). So the
service's CLI, the database and the files ``deploy.sh`` writes are all real; only the container boundary is not.

``deploy.sh`` writes next to itself (``deploy/prometheus/scrape-token``, the Alertmanager configuration), so the
tests run a copy of it in a scratch checkout made by :func:`deploy_checkout`, never the repository's own.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

from tests.deploy.support import DEPLOY, ROOT, VENV_BIN

_SHIM = '''#!{python}
"""docker, as far as deploy/deploy.sh uses its Compose CLI (see tests/deploy/compose_shim.py)."""
import json, os, subprocess, sys

arguments = sys.argv[1:]
with open(os.environ["DOCKER_SHIM_LOG"], "a") as log:
    log.write(json.dumps(arguments) + "\\n")
if arguments[:1] != ["compose"]:
    sys.exit(0)
rest = arguments[1:]
while rest and rest[0] in ("--project-directory", "-f", "--file", "-p", "--project-name"):
    rest = rest[2:]
command, rest = rest[0], rest[1:]
if command == "version":
    print("Docker Compose version v2 (the test suite's stand-in)")
    sys.exit(0)
if command not in ("run", "exec"):
    sys.exit(0)
while rest and rest[0].startswith("-"):
    rest = rest[1:]
service, argv = rest[0], rest[1:]
if not argv:
    argv = {{"migrate": ["library-api", "migrate"]}}[service]
if argv[0] == "library-api":
    argv[0] = {library_api!r}
sys.exit(subprocess.run(argv, cwd=os.environ["DOCKER_SHIM_WORKDIR"], check=False).returncode)
'''


def install_docker_shim(bin_dir: Path) -> Path:
    """Write the stand-in ``docker`` into ``bin_dir`` (put it first on ``PATH``) and return its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "docker"
    shim.write_text(_SHIM.format(python=sys.executable, library_api=str(VENV_BIN / "library-api")))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return shim


def docker_calls(log: Path) -> list[list[str]]:
    """Every call the stand-in received, in order."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def compose_command(call: list[str]) -> list[str]:
    """The Compose subcommand and its arguments of a recorded call (``[]`` for a call that is not Compose)."""
    if call[:1] != ["compose"]:
        return []
    rest = call[1:]
    while rest and rest[0] in ("--project-directory", "-f", "--file", "-p", "--project-name"):
        rest = rest[2:]
    return rest


def deploy_checkout(root: Path, env_values: dict[str, str]) -> Path:
    """A scratch checkout holding what ``deploy.sh`` reads: itself, the Compose file, the monitoring configuration,
    placeholder certificates and a private ``.env`` (the production example with ``env_values`` set).
    Returns the copied ``deploy/deploy.sh``."""
    deploy = root / "deploy"
    (deploy / "prometheus").mkdir(parents=True)
    (deploy / "alertmanager").mkdir()
    (deploy / "nginx" / "certs").mkdir(parents=True)
    shutil.copy2(DEPLOY / "deploy.sh", deploy / "deploy.sh")
    for name in ("compose.yaml", "pyproject.toml"):
        shutil.copy2(ROOT / name, root / name)
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy2(DEPLOY / "prometheus" / name, deploy / "prometheus" / name)
    shutil.copy2(DEPLOY / "alertmanager" / "alertmanager.yml", deploy / "alertmanager" / "alertmanager.yml")
    for name in ("fullchain.pem", "privkey.pem"):
        (deploy / "nginx" / "certs" / name).write_text("placeholder: nginx does not run here\n")
    lines = []
    for line in (ROOT / ".env.production.example").read_text().splitlines():
        key = line.partition("=")[0]
        lines.append(f"{key}={env_values[key]}" if key in env_values and not line.startswith("#") else line)
    present = {line.partition("=")[0] for line in lines}
    lines += [f"{key}={value}" for key, value in env_values.items() if key not in present]
    env_file = root / ".env"
    env_file.write_text("\n".join(lines) + "\n")
    env_file.chmod(0o600)
    return deploy / "deploy.sh"


def shim_environment(bin_dir: Path, log: Path, workdir: Path, **values: str) -> dict[str, str]:
    """The environment to run ``deploy.sh`` in: this one without deployment settings, ``values``, the stand-in first on
    ``PATH`` (also before a ``PATH`` in ``values``), its log and the working directory of the "containers"."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HEALTH_", "DEPLOY_", "BACKUP_", "COMPOSE_", "LIBRARY_API_", "K8S_"))
    }
    workdir.mkdir(parents=True, exist_ok=True)
    env.update(values)
    env.update(
        PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
        DOCKER_SHIM_LOG=str(log),
        DOCKER_SHIM_WORKDIR=str(workdir),
    )
    return env
