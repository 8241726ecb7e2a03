"""Figures the reliability tests measure (examples run, cells checked, races lost), printed after the run.

``docs/reliability.md`` records these figures with the command that produced them; the summary at the end of a
pytest run is where they are read from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

_FIGURES_KEY = pytest.StashKey[list[str]]()

Record = Callable[..., None]


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Record:
    """``figures(**values)``: remember one line of figures for this test, shown in the terminal summary."""
    store = request.config.stash.setdefault(_FIGURES_KEY, [])

    def record(**values: Any) -> None:
        shown = ", ".join(f"{key}={value}" for key, value in values.items())
        store.append(f"{request.node.nodeid}: {shown}")

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(_FIGURES_KEY, [])
    if lines:
        terminalreporter.section("reliability figures")
        for line in lines:
            terminalreporter.write_line(line)
