"""A last-resort end for a test that its per-test timeout could not stop, so that one hung test cannot hang a run.

pytest-timeout's default method raises from a SIGALRM handler. That ends a slow test cleanly (its fixtures tear
down, its servers stop), but Python runs the handler between bytecodes, wherever the main thread is: once a hung
test took the alarm inside a weak-reference callback of a garbage collection, where an exception is printed and
swallowed, and the run waited until CI stopped it.

This plugin watches every test from outside the main thread, at its timeout plus a grace (:data:`GRACE`), armed and
disarmed through pytest-timeout's own hooks (``pytest_timeout_set_timer``, ``pytest_timeout_cancel_timer``): a timer
thread then writes every thread's stack to ``.cache/hung-tests/<run>/<worker>-<pid>.log``, ends the processes the
test started and ends its own; faulthandler's C watchdog, which needs neither the GIL nor the main thread, does the
same (without the children) should that thread never run. Under pytest-xdist the controller reports the test as the
one its worker crashed in and starts a new worker, to which it hands the crashed test's module again: that worker
fails the test that hung at once (its log says so) instead of hanging on it again, and runs the rest.
``make test`` prints the stacks.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

#: Seconds the cooperative timeout gets to end a test before the watchdog ends the whole process (the
#: ``hard_timeout_grace`` ini value overrides it).
GRACE = 60.0

#: Seconds after the Python watchdog's time at which faulthandler's C watchdog ends the process if it has not.
LAST_RESORT = 30.0

#: Where the stacks of a test ended by the watchdog are written, one file per process.
LOG_DIRECTORY = Path(".cache/hung-tests")


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet waited for by its parent, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Watchdog:
    """The watchdog of one process, writing to that process's own log file.

    Two alarms per test. At the test's limit a Python timer thread writes every thread's stack, ends the processes
    the test started (a server left running would keep the output pipe of the run open, and its ports and rows in
    use) and ends this one. Should that thread never get the interpreter (a C call holding the GIL), faulthandler's
    C thread writes the stacks and ends this process :data:`LAST_RESORT` seconds later.
    """

    def __init__(self, directory: Path, worker: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{worker}-{os.getpid()}.log"
        self.log: IO[str] | None = None
        self.timer: threading.Timer | None = None
        #: The tests that ended an earlier process of this run: the first word of a dead process's non-empty log.
        self.hung = {
            log.read_text(encoding="utf-8").partition(" ")[0]
            for log in directory.glob("*.log")
            if log.stat().st_size and not alive(int(log.stem.rpartition("-")[2]))
        }

    def arm(self, item: pytest.Item, seconds: float) -> None:
        """End this process after ``seconds`` unless :meth:`disarm` comes first; the log names ``item``."""
        if self.log is None:
            self.log = self.path.open("a", encoding="utf-8")
        self.log.seek(0)
        self.log.truncate()
        self.log.write(f"{item.nodeid} was still running {seconds:.0f} s after it started; every thread's stack:\n")
        self.log.flush()
        faulthandler.dump_traceback_later(seconds + LAST_RESORT, exit=True, file=self.log)
        self.timer = threading.Timer(seconds, self.end, args=(self.log,))
        self.timer.daemon = True
        self.timer.start()

    def disarm(self) -> None:
        """The test ended by itself: nothing to report."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        faulthandler.cancel_dump_traceback_later()
        if self.log is not None:
            self.log.seek(0)
            self.log.truncate()
            self.log.flush()

    @staticmethod
    def end(log: IO[str]) -> None:
        """Write the stacks, end every process this one started (their children first), then this one."""
        faulthandler.dump_traceback(file=log, all_threads=True)
        started = psutil.Process().children(recursive=True)
        log.write(f"Ended with the processes it had started: {[child.pid for child in started]}\n")
        log.flush()
        for child in reversed(started):
            with contextlib.suppress(psutil.Error):
                child.kill()
        os._exit(1)


WATCHDOG = pytest.StashKey[Watchdog]()
GRACE_KEY = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("hard_timeout_grace", f"seconds past a test's timeout before its process is ended ({GRACE:.0f})")


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "main")
    config.stash[WATCHDOG] = Watchdog(config.rootpath / LOG_DIRECTORY / run, worker)
    config.stash[GRACE_KEY] = float(config.getini("hard_timeout_grace") or GRACE)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid in item.config.stash[WATCHDOG].hung:
        pytest.fail(f"{item.nodeid} hung in an earlier worker of this run and was ended (stacks in {LOG_DIRECTORY})")


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """pytest-timeout arms its own timer for ``item``: arm the watchdog for the same limit plus the grace.

    Answering nothing lets pytest-timeout's own implementation arm its timer too; the limit is the one it resolved
    (the test's mark, ``--timeout``, ``PYTEST_TIMEOUT`` or the ini value).
    """
    item.config.stash[WATCHDOG].arm(item, settings.timeout + item.config.stash[GRACE_KEY])


@pytest.hookimpl(optionalhook=True, wrapper=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> Generator[None, object, object]:
    """The test ended within its limit, or pytest-timeout ended it: disarm once pytest-timeout has cancelled its own.

    In that order, because an alarm that fires while the watchdog is already disarmed has nothing behind it: seen
    once, the alarm's handler ran inside a garbage callback during the disarming and the worker spun there for
    good, with both of the watchdog's timers already cancelled.
    """
    try:
        return (yield)
    finally:
        item.config.stash[WATCHDOG].disarm()
