"""Carrying a coroutine started outside a task into a task (the send that had to wait for a slow socket)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from library_api.realtime.connection import _Resume


def started(coroutine: Any) -> _Resume:
    """Run ``coroutine`` to its first suspension, as a connection does when a send must wait."""
    return _Resume(coroutine, coroutine.send(None))


async def test_a_resumed_coroutine_finishes_in_its_task_with_what_it_waited_for() -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def waits() -> None:
        seen.append(await gate)
        await asyncio.sleep(0)  # a second, bare suspension passes through as well
        seen.append("done")

    async def carry(resumed: _Resume) -> None:
        await resumed

    task = asyncio.create_task(carry(started(waits())))
    await asyncio.sleep(0)
    assert not task.done()
    gate.set_result("value")
    await task
    assert seen == ["value", "done"]


async def test_cancellation_reaches_the_resumed_coroutine() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def waits() -> None:
        try:
            await gate
        finally:
            cleaned.append("finally ran")

    async def carry(resumed: _Resume) -> None:
        await resumed

    task = asyncio.create_task(carry(started(waits())))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally ran"]
    assert gate.cancelled()


async def test_a_coroutine_that_handles_what_is_thrown_in_may_finish_normally() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    outcome: list[str] = []

    async def tolerant() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            outcome.append("handled")

    async def carry(resumed: _Resume) -> None:
        await resumed

    task = asyncio.create_task(carry(started(tolerant())))
    await asyncio.sleep(0)
    task.cancel()
    await task
    assert outcome == ["handled"]


async def test_closing_the_awaiting_generator_closes_the_coroutine() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    closed: list[str] = []

    async def waits() -> None:
        try:
            await gate
        except GeneratorExit:
            closed.append("closed")
            raise

    generator = started(waits()).__await__()
    assert next(generator) is gate
    generator.close()
    assert closed == ["closed"]
    gate.cancel()


async def test_a_coroutine_may_keep_waiting_after_handling_what_is_thrown_in() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[None] = loop.create_future()
    second: asyncio.Future[str] = loop.create_future()
    outcome: list[str] = []

    async def stubborn() -> None:
        try:
            await first
        except asyncio.CancelledError:
            outcome.append(await second)

    async def carry(resumed: _Resume) -> None:
        await resumed

    task = asyncio.create_task(carry(started(stubborn())))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()
    second.set_result("still here")
    await task
    assert outcome == ["still here"]
