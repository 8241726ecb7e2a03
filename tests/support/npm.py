"""The JavaScript examples (``examples/``) with their npm dependencies, installed once per lock file, outside Git.

Each example that has a ``package.json`` pins its dependencies in a ``package-lock.json``. :func:`installed`
runs ``npm ci --ignore-scripts`` for it into ``.cache/npm/<example>-<hash of the lock>/`` (``TEST_NPM_CACHE``
overrides the directory), once: later runs, other xdist workers and other tests find it there, and a changed
lock file gets a directory of its own. The install happens in a temporary directory renamed into place, under a
file lock, so two processes never install into the same tree. :func:`stage` copies an example and the shared
client next to each other into a test's directory and links the installed ``node_modules`` into it, so a test
runs the checked-in sources as they are now, never a stale copy.

Without ``node`` or ``npm`` the caller skips with the reason (and fails under ``CI=true``, where ``.ci/run``
installs them).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.services import unavailable

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CACHE = Path(os.environ.get("TEST_NPM_CACHE", REPO / ".cache" / "npm"))
SHARED = ("live-client",)
"""Example directories every example imports from (copied next to it when it is staged)."""
NOT_SOURCES = shutil.ignore_patterns("node_modules", "dist")


def tool(name: str) -> str:
    """The path of ``node`` or ``npm``, or skip (fail in CI) saying how to get it."""
    found = shutil.which(name)
    if found is None:
        unavailable(f"{name} is not installed (apt-get install nodejs npm)")
    assert found is not None
    return found


def node_major() -> int:
    """The major version of the ``node`` on PATH."""
    version = subprocess.run([tool("node"), "--version"], capture_output=True, text=True, check=True, timeout=30)
    return int(version.stdout.strip().lstrip("v").split(".")[0])


def installed(example: str, timeout: float = 300) -> Path:
    """The ``node_modules`` of ``examples/<example>`` as its lock file pins them (installed on first use)."""
    lock = EXAMPLES / example / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes() + (EXAMPLES / example / "package.json").read_bytes()).hexdigest()
    target = CACHE / f"{example}-{digest[:16]}"
    modules = target / "node_modules"
    if modules.is_dir():
        return modules
    npm = tool("npm")
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{example}.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if modules.is_dir():  # installed by another process while this one waited
            return modules
        work = Path(tempfile.mkdtemp(prefix=f"{example}-", dir=CACHE))
        try:
            for name in ("package.json", "package-lock.json"):
                shutil.copy2(EXAMPLES / example / name, work / name)
            done = subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if done.returncode != 0:
                unavailable(f"npm ci for examples/{example} failed (is the npm registry reachable?): {done.stderr}")
            work.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return modules


def stage(example: str, directory: Path) -> Path:
    """Copy ``examples/<example>`` and the shared client into ``directory`` with its dependencies; its path there."""
    modules = installed(example)
    for name in (*SHARED, example):
        shutil.copytree(EXAMPLES / name, directory / "examples" / name, ignore=NOT_SOURCES, dirs_exist_ok=True)
    staged = directory / "examples" / example
    (staged / "node_modules").symlink_to(modules, target_is_directory=True)
    return staged
