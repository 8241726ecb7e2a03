"""Which child processes coverage measures.

Coverage measures every Python child process (``[tool.coverage.run] patch = ["subprocess"]`` puts its settings in
``COVERAGE_PROCESS_CONFIG``, which children inherit), and measuring costs CPU in each of them: start-up, and a
trace call on every new code object. A child that runs none of the service's code (an echo upstream, a schema
validator, a health-check script, a probe that only reads configuration) adds nothing to the report, so tests
start such children with :func:`unmeasured` environments. Servers whose adapters are under test stay measured.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

COVERAGE_VARIABLES = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


def unmeasured(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (this process's environment by default) in which a Python child is not measured."""
    source = os.environ if env is None else env
    return {key: value for key, value in source.items() if key not in COVERAGE_VARIABLES}
