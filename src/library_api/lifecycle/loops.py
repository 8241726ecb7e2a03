"""Background loops that end when stopped, whatever error a cancellation reaches them as.

The e-mail notifier, password resets, the live credential checks and the live event relay each run rounds in a
task until it is stopped, and a failed round (the database or the mail server away) is logged and followed by
the next one. Cancelling such a task is not enough to end it: a cancellation that arrives while the driver waits
on the database can surface as the driver's own error (it closes the connection it was interrupted on), which
the loop logs and survives like any outage. So every loop also ends on a flag, set before the cancellation,
which it checks at each turn; and a loop's pauses end as soon as the flag is set.

:class:`Loops` is that machinery once: ``start`` a task per loop, ``pause`` between rounds, ``finish`` (let the
loops end their round) or ``stop`` (cancel them), and the flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("library_api.lifecycle")

OnError = Callable[[Exception], None]
"""What a loop does with the error of a failed round (it logs it); the loop then goes on."""


class Loops:
    """The tasks of one component's background loops, and the flag that ends them."""

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._wakes: list[asyncio.Event] = []

    @property
    def running(self) -> bool:
        """Whether loops were started and not stopped since."""
        return bool(self._tasks)

    @property
    def stopping(self) -> bool:
        """Whether stopping has begun: a loop's round may check it to end early."""
        return self._stopping.is_set()

    def start(
        self,
        name: str,
        round_: Callable[[], Awaitable[object]],
        *,
        errors: tuple[type[Exception], ...] = (),
        on_error: OnError | None = None,
    ) -> None:
        """Run ``round_`` again and again in a task named ``name`` until stopped.

        An error of one of the ``errors`` types ends that round only: it goes to ``on_error`` (logged with its
        traceback when there is none) and the next round starts. A round that may fail over and over waits
        (:meth:`pause`) within itself, before or after its work, so a lasting outage is not retried in a spin.
        """
        self._stopping.clear()
        self._tasks.append(asyncio.create_task(self._run(name, round_, errors, on_error), name=name))

    async def _run(
        self,
        name: str,
        round_: Callable[[], Awaitable[object]],
        errors: tuple[type[Exception], ...],
        on_error: OnError | None,
    ) -> None:
        while not self._stopping.is_set():
            try:
                await round_()
            except errors as exc:
                if on_error is None:
                    logger.exception("a round of %s failed; the next one follows", name)
                else:
                    on_error(exc)

    async def pause(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Wait ``seconds``, or less: until ``wake`` is set, or at once when stopping begins."""
        if self._stopping.is_set():
            return
        event = self._stopping if wake is None else wake
        self._wakes.append(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=seconds)
        finally:
            self._wakes.remove(event)

    def _signal(self) -> None:
        """Set the flag and end every pause under way."""
        self._stopping.set()
        for event in self._wakes:
            event.set()

    async def finish(self) -> None:
        """Have the loops end at their next turn, and wait until they have.

        The caller bounds the wait: a timeout cancels the loops it was waiting for. :meth:`stop` afterwards
        cancels what is left and makes a later start possible.
        """
        self._signal()
        for task in list(self._tasks):
            await task
        self._tasks = []

    async def stop(self) -> None:
        """End the loops now: the flag, then a cancellation of each; returns when every task has ended."""
        self._signal()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stopping.clear()
