"""The circuit breaker's states, with a clock the test moves."""

from __future__ import annotations

from library_api.resilience.breaker import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_the_threshold_and_recovers_through_one_trial() -> None:
    clock = Clock()
    changes: list[CircuitState] = []
    breaker = CircuitBreaker("Redis", failure_threshold=3, reset_timeout=5, on_change=changes.append, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure(ConnectionError())
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure(ConnectionError())
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow()

    clock.now += 5
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # only one at a time
    breaker.record_failure(TimeoutError())
    assert breaker.state is CircuitState.OPEN  # a failed trial re-opens at once
    assert not breaker.allow()

    clock.now += 5
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow()
    assert changes == [
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.CLOSED,
    ]


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker("Redis", failure_threshold=2, reset_timeout=1, clock=Clock())
    breaker.record_failure(ConnectionError())
    breaker.record_success()
    breaker.record_failure(ConnectionError())
    assert breaker.state is CircuitState.CLOSED
