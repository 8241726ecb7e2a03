"""A circuit breaker: stop calling a dependency that keeps failing, and try again after a pause.

Closed: calls go through; ``failure_threshold`` consecutive failures open the circuit. Open: calls are refused
at once (the caller falls back) until ``reset_timeout`` seconds have passed. Half-open: one trial call is let
through; its success closes the circuit, its failure opens it again for another ``reset_timeout``. The
breaker never sleeps and never starts tasks: recovery is tried by the next call that comes along (a request or
a health probe), so a service with no traffic costs nothing while a dependency is down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import IntEnum

logger = logging.getLogger("library_api.resilience")


class CircuitState(IntEnum):
    """The breaker's state; the values are what the ``circuit_breaker_state`` gauge reports."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Tracks the health of one dependency in this process; ``recoveries`` counts the times it came back.

    ``clock`` (monotonic seconds) times the pause of an open circuit; it is public so that a test can hold or
    move the time of a running application's breaker instead of waiting for it.
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int,
        reset_timeout: float,
        on_change: Callable[[CircuitState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._on_change = on_change
        self.clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.recoveries = 0

    @property
    def state(self) -> CircuitState:
        """The current state (an open circuit past its pause reports half-open: the next call is a trial)."""
        if self._state is CircuitState.OPEN and self.clock() - self._opened_at >= self.reset_timeout:
            return CircuitState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the dependency now; in half-open state only one trial at a time."""
        if self._state is CircuitState.CLOSED:
            return True
        if self._trial_in_flight or self.clock() - self._opened_at < self.reset_timeout:
            return False
        self._trial_in_flight = True
        self._set(CircuitState.HALF_OPEN)
        return True

    def record_success(self) -> None:
        """A call succeeded: close the circuit (logging the recovery when it was open)."""
        self._failures = 0
        self._trial_in_flight = False
        if self._state is not CircuitState.CLOSED:
            logger.info("%s is reachable again: circuit closed", self.name)
            self.recoveries += 1
            self._set(CircuitState.CLOSED)

    def record_failure(self, error: BaseException) -> None:
        """A call failed: count it, and open the circuit at the threshold or when a trial fails."""
        self._failures += 1
        trial = self._trial_in_flight
        self._trial_in_flight = False
        if trial or (self._state is CircuitState.CLOSED and self._failures >= self.failure_threshold):
            if not trial:
                logger.warning(
                    "%s unavailable (%s): circuit opened after %d failures; retrying in %g s",
                    self.name,
                    type(error).__name__,
                    self._failures,
                    self.reset_timeout,
                )
            self._opened_at = self.clock()
            self._set(CircuitState.OPEN)

    def _set(self, state: CircuitState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
