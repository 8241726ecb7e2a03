"""Render the kustomizations under ``deploy/k8s`` with the real kustomize, as an operator's ``kubectl apply -k`` does.

``kubectl kustomize`` is preferred (the kustomize an operator's kubectl embeds); the standalone ``kustomize build``
is used where only it is installed. Without either, the calling test skips with the reason, and fails under
``CI=true`` (the CI workflow installs kubectl).

Run it by hand: ``python -m tests.deploy.kustomize deploy/k8s/overlays/production``.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.services import unavailable

SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


class KustomizeError(Exception):
    """kustomize refused a kustomization (its own message is the exception's text)."""


def kustomize_command() -> list[str]:
    """The command that renders a kustomization directory appended to it (skips when no kustomize is installed)."""
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=SEARCH_PATH)
    if kubectl is not None:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize") or shutil.which("kustomize", path=SEARCH_PATH)
    if kustomize is not None:
        return [kustomize, "build"]
    unavailable("neither kubectl nor kustomize is installed (the CI workflow installs kubectl)")
    raise AssertionError("unreachable")  # pragma: no cover


@functools.cache
def _rendered_text(directory: Path) -> str:
    result = subprocess.run(
        [*kustomize_command(), str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise KustomizeError(f"{directory}: {result.stderr.strip()}")
    return result.stdout


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects the kustomization in ``directory`` produces (a fresh copy on every call: tests may alter it)."""
    return [document for document in yaml.safe_load_all(_rendered_text(directory.resolve())) if document]


if __name__ == "__main__":
    sys.stdout.write(_rendered_text(Path(sys.argv[1]).resolve()))
