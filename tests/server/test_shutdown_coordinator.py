"""The shutdown coordinator's drain: notice, wait with progress, force-close at the deadline or on demand."""

from __future__ import annotations

import asyncio
import logging

import pytest

from library_api.lifecycle.shutdown import ShutdownCoordinator


class Connections:
    """A drainer holding a number of connections, as the WebSocket hub does."""

    name = "connections"

    def __init__(self, coordinator: ShutdownCoordinator, count: int) -> None:
        self.coordinator = coordinator
        self.count = count
        self.deadline: float | None = None
        self.closed_by_force = 0

    def active(self) -> int:
        return self.count

    async def begin_drain(self, deadline: float) -> None:
        self.deadline = deadline

    async def close_remaining(self) -> None:
        self.closed_by_force = self.count
        self.count = 0

    def leave(self) -> None:
        self.count -= 1
        self.coordinator.notify()


async def test_drain_waits_for_clients_to_leave(caplog: pytest.LogCaptureFixture) -> None:
    coordinator = ShutdownCoordinator(timeout=30, progress_interval=0.05)
    connections = Connections(coordinator, 3)
    coordinator.add_drainer(connections)

    async def leave_one_by_one() -> None:
        while connections.count:
            await asyncio.sleep(0.06)
            connections.leave()

    with caplog.at_level(logging.INFO, logger="library_api.shutdown"):
        await asyncio.gather(coordinator.drain(), leave_one_by_one())
    assert coordinator.draining
    assert connections.deadline is not None
    assert connections.closed_by_force == 0
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shutdown progress")]
    assert progress, caplog.text
    assert "connection(s) open" in progress[0] and "elapsed" in progress[0] and "left" in progress[0]
    await coordinator.drain()  # a second call returns at once


async def test_deadline_closes_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    coordinator = ShutdownCoordinator(timeout=0.1, progress_interval=10)
    connections = Connections(coordinator, 2)
    coordinator.add_drainer(connections)
    with caplog.at_level(logging.INFO, logger="library_api.shutdown"):
        await coordinator.drain()
    assert connections.closed_by_force == 2
    assert "timeout reached" in caplog.text


async def test_force_ends_the_wait(caplog: pytest.LogCaptureFixture) -> None:
    coordinator = ShutdownCoordinator(timeout=60, progress_interval=10)
    connections = Connections(coordinator, 1)
    coordinator.add_drainer(connections)
    drain = asyncio.create_task(coordinator.drain())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(coordinator.drain())  # concurrent callers wait for the same drain
    coordinator.force()
    with caplog.at_level(logging.INFO, logger="library_api.shutdown"):
        await asyncio.wait_for(asyncio.gather(drain, waiter), timeout=5)
    assert connections.closed_by_force == 1
    assert "forced by a second signal" in caplog.text


async def test_nothing_to_drain_finishes_at_once() -> None:
    coordinator = ShutdownCoordinator(timeout=60, progress_interval=10)
    await asyncio.wait_for(coordinator.drain(), timeout=1)
    assert coordinator.active() == 0
