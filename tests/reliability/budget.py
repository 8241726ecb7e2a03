"""How hard the reliability suite pushes: a small fixed budget for CI, a larger one behind ``RELIABILITY_BUDGET``.

``RELIABILITY_BUDGET=full`` (or any unknown value: a typo should not silently shrink a long run) selects the
long budget; unset or ``ci`` selects the one ``.ci/run`` uses. Seeds are fixed in both, so a failure found once
is found again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """The sizes of one reliability run."""

    name: str
    contract_examples: int
    contract_seed: int
    booking_races: tuple[tuple[int, int], ...]
    """(readers racing, copies of the book) for each round of the booking race."""
    refresh_races: int
    hostile_repeats: int


CI = Budget(
    name="ci",
    contract_examples=5,
    contract_seed=20261123,
    booking_races=((12, 1), (20, 3), (30, 5)),
    refresh_races=3,
    hostile_repeats=1,
)
FULL = Budget(
    name="full",
    contract_examples=100,
    contract_seed=20261123,
    booking_races=((12, 1), (20, 3), (30, 5), (60, 2), (100, 7), (100, 1)),
    refresh_races=20,
    hostile_repeats=5,
)


def current() -> Budget:
    """The budget chosen by ``RELIABILITY_BUDGET`` (``ci`` when unset)."""
    chosen = os.environ.get("RELIABILITY_BUDGET", "ci").strip().lower()
    return CI if chosen in ("", "ci") else FULL
