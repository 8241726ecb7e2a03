"""The in-process event bus: every handler gets every event, and one failing handler harms no one."""

from __future__ import annotations

import logging

import pytest

from library_api.events import DomainEvent, EventBus


async def test_a_failing_handler_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    received: list[str] = []

    async def broken(event: DomainEvent) -> None:
        raise RuntimeError("handler bug")

    async def recorder(event: DomainEvent) -> None:
        received.append(event.type)

    bus.subscribe(broken)
    bus.subscribe(recorder)
    with caplog.at_level(logging.ERROR, logger="library_api.events"):
        await bus.publish(DomainEvent(type="book.created", topics=("books",), data={"id": 1}))
    assert received == ["book.created"]
    assert "event handler failed for book.created" in caplog.text
