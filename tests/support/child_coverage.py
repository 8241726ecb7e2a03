"""Which test modules' child processes coverage measures, and a way to tell which ones must be.

Coverage measures every Python child process (``[tool.coverage.run] patch = ["subprocess"]``), and measuring one
roughly doubles the CPU its start-up costs. A module marked ``children_unmeasured`` starts its children without
coverage (an autouse fixture of ``tests/conftest.py``): what they run is covered as
fully by the rest of the suite.

That is a measured fact, not a guess. Loaded as a plugin (``-p tests.support.child_coverage``), this module gives
each test module's children a data file of their own, ``.coverage.<module>.*`` (coverage's settings reach a child
through ``COVERAGE_PROCESS_CONFIG``, whose ``data_file`` is rewritten per module); ``scripts/child_coverage.py``
then finds the modules whose children's data can be left out without one line or branch of any file being lost.
While this plugin is loaded, the ``children_unmeasured`` marks are ignored, so that every module is judged afresh.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

CONFIG_VARIABLE = "COVERAGE_PROCESS_CONFIG"
_inherited = os.environ.get(CONFIG_VARIABLE)


def module_slug(nodeid: str) -> str:
    """``tests/e2e/test_workers.py::test_x`` → ``tests-e2e-test_workers``: the part of a data file's name."""
    return nodeid.split("::", maxsplit=1)[0].removesuffix(".py").replace("/", "-")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before a test and its fixtures start anything, point its children's coverage at the module's data file."""
    if not _inherited:
        return
    settings = json.loads(base64.b64decode(_inherited))
    settings["data_file"] = f"{settings['data_file']}.{module_slug(item.nodeid)}"
    os.environ[CONFIG_VARIABLE] = base64.b64encode(json.dumps(settings).encode()).decode()
