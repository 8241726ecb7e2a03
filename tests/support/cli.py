"""``library-api`` commands run inside the test process, for speed, with the exit code and output of a real run.

A command in a new process costs seconds here (an interpreter, the package's imports, coverage's start-up);
most tests only need what the command does, so they call the Typer application through Click's runner with
the environment a process would have had. At least one test per command family still starts the real
executable, so that the entry point itself stays covered.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from typer.testing import CliRunner

from library_api.cli.main import app

SETTING_PREFIXES = ("DATABASE_", "REDIS_", "LIBRARY_API_")
"""Variables of the test process that must not leak into a command's settings unless given explicitly."""


def invoke(arguments: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``library-api *arguments`` in this process with ``env`` as its environment's settings.

    The command runs on a thread of its own: commands start and close their own event loop, which must not
    touch the test's loop or the main thread's notion of the current one.
    """
    cleared: dict[str, str | None] = {key: None for key in os.environ if key.startswith(SETTING_PREFIXES)}
    with ThreadPoolExecutor(max_workers=1) as executor:
        result = executor.submit(
            CliRunner().invoke, app, list(arguments), env={**cleared, **env}, catch_exceptions=False
        ).result()
    return subprocess.CompletedProcess(["library-api", *arguments], result.exit_code, result.stdout, result.stderr)
