"""Interval arithmetic for half-open booking periods ``[start, end)``."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime


def peak_overlap(periods: Iterable[tuple[datetime, datetime]], start: datetime, end: datetime | None = None) -> int:
    """The largest number of ``periods`` that cover one instant within ``[start, end)`` (``end=None``: forever).

    A period ending at the instant another starts does not overlap it (half-open), so returns and new
    bookings can meet back to back.
    """
    events: list[tuple[datetime, int]] = []
    for period_start, period_end in periods:
        clipped_start = max(period_start, start)
        clipped_end = period_end if end is None else min(period_end, end)
        if clipped_start < clipped_end:
            events.append((clipped_start, 1))
            events.append((clipped_end, -1))
    events.sort(key=lambda item: (item[0], item[1]))
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak
