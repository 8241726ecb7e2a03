"""Waiting on a condition with a bounded deadline, and knowing that the server which answers is the one started.

Every wait in the suite polls a condition until it holds or a deadline passes; nothing sleeps in place of
waiting. :func:`wait_for` is the blocking form, :func:`wait_until` the one for a test's event loop (its condition
may be a coroutine function); both raise :class:`WaitTimeout` (an ``AssertionError`` and a ``TimeoutError``, so
either ``except`` catches it).

:func:`wait_answering` is the one readiness check of every server process a test starts (``library-api serve``
under any server, Gunicorn with the deployment's configuration): the path must answer 200, and the port's
listening socket must belong to the very process this start made. The per-start token is that process: its
socket was bound by the test and handed down (or bound by the child itself and reported in its own log), and
``/proc`` shows which process holds it, so an answer from a server of an earlier start, another test or another
run on the machine never counts.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx

from tests.support.ports import listens


class WaitTimeout(AssertionError, TimeoutError):
    """A condition did not hold before its deadline; the message says what was awaited."""


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, within: float, what: str, interval: float = 0.02
) -> None:
    """Poll ``condition`` inside the event loop until it holds; fail with ``what`` when ``within`` seconds pass.

    ``condition`` may be a coroutine function (a query of the database, a read of Redis): it is awaited each time.
    """
    deadline = time.monotonic() + within
    while not await _holds(condition):
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(interval)


async def _holds(condition: Callable[[], bool | Awaitable[bool]]) -> bool:
    """Whether ``condition`` holds now, awaiting it when it is a coroutine function."""
    result = condition()
    return await result if inspect.isawaitable(result) else result


def answers_ok(url: str, process: subprocess.Popen[bytes], verify: ssl.SSLContext | bool = True) -> bool:
    """Whether ``url`` answers 200 from ``process`` itself; fails at once when ``process`` has exited.

    A 200 counts only once ``process`` holds the socket listening on the URL's port (``/proc``), which is what
    makes the answer this start's and nobody else's.
    """
    if process.poll() is not None:
        raise AssertionError(f"the server exited with {process.returncode} before {url} answered 200")
    try:
        if httpx.get(url, timeout=2.0, verify=verify).status_code != 200:
            return False
    except httpx.HTTPError:
        return False
    port = urlsplit(url).port
    return port is None or listens(process.pid, port)


def wait_answering(
    url: str, process: subprocess.Popen[bytes], timeout: float, verify: ssl.SSLContext | bool = True
) -> None:
    """Wait until ``url`` answers 200 from ``process`` (see :func:`answers_ok`), for at most ``timeout`` seconds."""
    wait_for(lambda: answers_ok(url, process, verify), timeout, f"{url} to answer 200 from process {process.pid}", 0.1)
