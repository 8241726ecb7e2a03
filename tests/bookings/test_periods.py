"""Peak overlap of half-open periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from library_api.holdings.periods import peak_overlap

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def test_back_to_back_periods_do_not_overlap() -> None:
    assert peak_overlap([(at(0), at(2)), (at(2), at(4))], at(0), at(4)) == 1


def test_peak_is_found_inside_the_window_only() -> None:
    periods = [(at(0), at(5)), (at(1), at(3)), (at(2), at(6)), (at(10), at(12))]
    assert peak_overlap(periods, at(0), at(10)) == 3
    assert peak_overlap(periods, at(4), at(10)) == 2
    assert peak_overlap(periods, at(6), at(10)) == 0
    assert peak_overlap(periods, at(4)) == 2  # open-ended window


def test_no_periods() -> None:
    assert peak_overlap([], at(0), at(1)) == 0
