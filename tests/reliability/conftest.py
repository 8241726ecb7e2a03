"""Figures the reliability tests measure (examples run, cells checked, races lost), printed after the run.

``docs/reliability.md`` records these figures with the command that produced them; the summary at the end of a
pytest run is where they are read from. Each line travels in its test's report (``user_properties``), so that
under xdist the figures measured in the workers reach the summary printed by the controller
(:func:`tests.conftest.pytest_terminal_summary`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import FIGURES_PROPERTY

Record = Callable[..., None]


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Record:
    """``figures(**values)``: remember one line of figures for this test, shown in the terminal summary."""

    def record(**values: Any) -> None:
        shown = ", ".join(f"{key}={value}" for key, value in values.items())
        request.node.user_properties.append((FIGURES_PROPERTY, shown))

    return record
