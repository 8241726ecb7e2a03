"""Graceful shutdown, decided by the application rather than by whichever server runs it.

The server adapters hand the first SIGTERM/SIGINT to :meth:`ShutdownCoordinator.drain` *before* the server's
own shutdown starts. Draining turns readiness off at once, asks every registered :class:`Drainer` (the
WebSocket hub, for one) to refuse newcomers and tell its clients, then waits for them to leave, logging
progress every ``SHUTDOWN_PROGRESS_INTERVAL`` seconds, and closes whatever is left at ``SHUTDOWN_TIMEOUT``.
Only then does the server stop accepting and finish in-flight HTTP requests. A second signal calls
:meth:`ShutdownCoordinator.force`, which ends the wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

logger = logging.getLogger("library_api.shutdown")


class Drainer(Protocol):
    """Something holding long-lived connections that must be let go of gracefully."""

    name: str

    def active(self) -> int:
        """How many connections are still open."""
        ...

    async def begin_drain(self, deadline: float) -> None:
        """Refuse new connections and tell the open ones that the server stops at ``deadline`` (epoch seconds)."""
        ...

    async def close_remaining(self) -> None:
        """Close every connection still open (close code 1001, going away)."""
        ...


class ShutdownCoordinator:
    """Runs one graceful drain per process; idempotent, safe to call from any server's hook."""

    def __init__(self, timeout: float, progress_interval: float) -> None:
        self.timeout = timeout
        self.progress_interval = progress_interval
        self._drainers: list[Drainer] = []
        self._draining = False
        self._forced = asyncio.Event()
        self._changed = asyncio.Event()
        self._done = asyncio.Event()

    @property
    def draining(self) -> bool:
        """Whether shutdown has begun (readiness reports 503 from this moment)."""
        return self._draining

    def add_drainer(self, drainer: Drainer) -> None:
        """Include ``drainer`` in every future drain."""
        self._drainers.append(drainer)

    def notify(self) -> None:
        """Tell the coordinator that a drainer's count changed, so the wait re-checks at once."""
        self._changed.set()

    def active(self) -> int:
        """Connections still open across all drainers."""
        return sum(drainer.active() for drainer in self._drainers)

    def force(self) -> None:
        """End the wait now (a second signal): the remaining connections are closed immediately."""
        self._draining = True
        self._forced.set()
        self._changed.set()

    async def drain(self) -> None:
        """Drain once; concurrent or later calls wait for the same drain to finish."""
        if self._draining and not self._forced.is_set():
            await self._done.wait()
            return
        if self._done.is_set():
            return
        self._draining = True
        started = time.monotonic()
        deadline = started + self.timeout
        wall_deadline = time.time() + self.timeout
        logger.info(
            "shutdown started: %d connection(s) open, waiting up to %.0f s for them to leave",
            self.active(),
            self.timeout,
        )
        for drainer in self._drainers:
            await drainer.begin_drain(wall_deadline)
        next_report = started + self.progress_interval
        while self.active() > 0 and not self._forced.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_report:
                logger.info(
                    "shutdown progress: %d connection(s) open, %.0f s elapsed, %.0f s left",
                    self.active(),
                    now - started,
                    deadline - now,
                )
                next_report += self.progress_interval
            self._changed.clear()
            wait = min(deadline, next_report) - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=max(wait, 0))
        remaining = self.active()
        if remaining:
            reason = "forced by a second signal" if self._forced.is_set() else "timeout reached"
            logger.warning("shutdown: closing %d remaining connection(s) (%s)", remaining, reason)
            for drainer in self._drainers:
                await drainer.close_remaining()
        logger.info("shutdown drain finished after %.1f s", time.monotonic() - started)
        self._done.set()
