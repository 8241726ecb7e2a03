"""Background loops: a failed round is followed by the next, and stopping ends a loop whatever its round raised."""

from __future__ import annotations

import asyncio
import logging

import pytest

from library_api.lifecycle.loops import Loops

BOUND = 10.0
"""Seconds any wait here may take at most before the test fails."""


async def test_a_failed_round_is_reported_and_the_next_one_follows() -> None:
    loops = Loops()
    rounds = 0
    errors: list[Exception] = []
    third = asyncio.Event()

    async def round_() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 3:
            third.set()
            await asyncio.Event().wait()
        raise OSError(f"round {rounds}")

    loops.start("failing", round_, errors=(OSError,), on_error=errors.append)
    assert loops.running
    await asyncio.wait_for(third.wait(), BOUND)
    await loops.stop()
    assert [str(error) for error in errors] == ["round 1", "round 2"]
    assert not loops.running


async def test_stop_ends_a_loop_that_survives_its_cancellation() -> None:
    """A cancellation surfacing as the driver's error is logged like an outage; the flag still ends the loop."""
    loops = Loops()
    waiting = asyncio.Event()
    errors: list[Exception] = []

    async def round_() -> None:
        waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise OSError("connection closed while waiting") from None

    loops.start("database", round_, errors=(OSError,), on_error=errors.append)
    await asyncio.wait_for(waiting.wait(), BOUND)
    await asyncio.wait_for(loops.stop(), BOUND)
    assert [str(error) for error in errors] == ["connection closed while waiting"]
    assert not loops.running
    assert not loops.stopping, "a later start is possible"


async def test_an_error_without_a_handler_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    loops = Loops()
    second = asyncio.Event()
    rounds = 0

    async def round_() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 2:
            second.set()
            await asyncio.Event().wait()
        raise ValueError("broken round")

    with caplog.at_level(logging.ERROR, logger="library_api.lifecycle"):
        loops.start("logged", round_, errors=(ValueError,))
        await asyncio.wait_for(second.wait(), BOUND)
        await loops.stop()
    [record] = [record for record in caplog.records if record.name == "library_api.lifecycle"]
    assert "a round of logged failed" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


async def test_pauses_end_when_woken_when_stopping_begins_or_after_their_time() -> None:
    loops = Loops()
    wake = asyncio.Event()
    woken = asyncio.create_task(loops.pause(BOUND * 10, wake))
    await asyncio.sleep(0)  # the pause has begun
    assert not woken.done()
    wake.set()
    await asyncio.wait_for(woken, BOUND)

    await loops.pause(0.001)  # its time passes

    paused = asyncio.Event()

    async def round_() -> None:
        paused.set()
        await loops.pause(BOUND * 10, asyncio.Event())

    loops.start("pausing", round_)
    await asyncio.wait_for(paused.wait(), BOUND)
    await asyncio.wait_for(loops.finish(), BOUND)  # the flag ended the pause: no cancellation needed
    assert not loops.running
    assert loops.stopping
    await loops.pause(BOUND * 10)  # returns at once while stopping
    await loops.stop()
    assert not loops.stopping


async def test_finish_lets_the_round_under_way_end() -> None:
    loops = Loops()
    started, gate = asyncio.Event(), asyncio.Event()
    ended: list[str] = []

    async def round_() -> None:
        started.set()
        await gate.wait()
        ended.append("round")

    loops.start("finishing", round_)
    await asyncio.wait_for(started.wait(), BOUND)
    finishing = asyncio.create_task(loops.finish())
    await asyncio.sleep(0)
    assert not finishing.done(), "finish waits for the round"
    gate.set()
    await asyncio.wait_for(finishing, BOUND)
    assert ended == ["round"], "the round ended on its own, once"
    await loops.stop()


async def test_a_deadline_on_finish_leaves_the_rest_to_stop() -> None:
    loops = Loops()
    started = asyncio.Event()

    async def round_() -> None:
        started.set()
        await asyncio.Event().wait()

    loops.start("stuck", round_)
    await asyncio.wait_for(started.wait(), BOUND)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await loops.finish()
    await asyncio.wait_for(loops.stop(), BOUND)
    assert not loops.running
