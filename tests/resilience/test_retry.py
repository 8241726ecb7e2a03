"""Retries with backoff and jitter: bounded delays, only for errors that may pass."""

from __future__ import annotations

import pytest

from library_api.resilience.retry import Backoff, retry


def test_delays_grow_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(base=0.1, cap=0.5)
    for attempt, bound in ((0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (10, 0.5)):
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0 <= delay <= bound for delay in delays)
        assert len(set(delays)) > 150  # spread out, not in lock step


async def test_retries_transient_errors_until_success() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "done"

    result = await retry(
        flaky, attempts=3, backoff=Backoff(0.001, 0.002), retry_on=lambda e: isinstance(e, OSError), description="x"
    )
    assert result == "done"
    assert len(calls) == 3


async def test_gives_up_after_the_attempts_and_never_retries_other_errors() -> None:
    calls: list[str] = []

    async def down() -> None:
        calls.append("down")
        raise ConnectionRefusedError("refused")

    async def wrong() -> None:
        calls.append("wrong")
        raise ValueError("a bug, not an outage")

    backoff = Backoff(0.001, 0.001)
    with pytest.raises(ConnectionRefusedError):
        await retry(down, attempts=2, backoff=backoff, retry_on=lambda e: isinstance(e, OSError), description="x")
    with pytest.raises(ValueError, match="a bug"):
        await retry(wrong, attempts=5, backoff=backoff, retry_on=lambda e: isinstance(e, OSError), description="x")
    assert calls == ["down", "down", "wrong"]
