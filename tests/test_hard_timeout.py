"""The suite's last-resort timeout (``tests/support/hard_timeout.py``), run on real hung tests in a child pytest.

Each case runs one test file under a separate pytest with a 1 s per-test timeout. A test that the alarm cannot
reach (SIGALRM blocked, as inside a callback that swallows the alarm's exception) must end its process with the
stacks written down and the processes it started ended, 1 s of grace later; a test the alarm can end (60 s of
grace: the alarm must win), or one that finishes, must leave no stacks behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.hard_timeout import LOG_DIRECTORY, alive
from tests.support.polling import wait_for

# The child pytests run none of the service's code: nothing to measure in them.
pytestmark = pytest.mark.children_unmeasured

ROOT = Path(__file__).resolve().parents[1]

#: Bounds each child pytest; the hung one is ended after about 2 s.
CHILD_TIMEOUT = 120

HUNG = """
import pathlib
import signal
import subprocess
import sys
import threading


def test_out_of_the_alarms_reach():
    server = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait()"])
    pathlib.Path("started.pid").write_text(str(server.pid))
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    threading.Event().wait()


def test_after_it():
    assert True
"""

INTERRUPTIBLE = """
import threading


def test_the_alarm_ends():
    threading.Event().wait()
"""

QUICK = """
def test_finishes():
    assert True
"""

DISARM_WATCHED = """
import pathlib
import signal

from tests.support import hard_timeout

disarm = hard_timeout.Watchdog.disarm


def watched(self):
    pathlib.Path("alarm-left-at-disarm.txt").write_text(repr(signal.getitimer(signal.ITIMER_REAL)[0]))
    disarm(self)


hard_timeout.Watchdog.disarm = watched


def test_finishes():
    assert True
"""


def run_child(
    tmp_path: Path, source: str, grace: int = 1, *options: str, **others: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``source`` as ``test_case.py`` (and ``others`` as ``test_<name>.py``) under a child pytest (1 s timeout,
    then ``grace`` seconds for the watchdog); return it and what its watchdog logs hold."""
    (tmp_path / "test_case.py").write_text(source, encoding="utf-8")
    for name, text in others.items():
        (tmp_path / f"test_{name}.py").write_text(text, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_ADDOPTS", None)
    child = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "tests.support.hard_timeout", "-p", "no:cacheprovider"),
            *("-o", "timeout=1", "-o", f"hard_timeout_grace={grace}", "--rootdir", str(tmp_path), *options),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    logs = "".join(path.read_text(encoding="utf-8") for path in sorted((tmp_path / LOG_DIRECTORY).glob("*/*.log")))
    return child, logs


@pytest.mark.timeout(2 * CHILD_TIMEOUT)
def test_a_test_the_alarm_cannot_reach_ends_its_process_with_the_stacks_written(tmp_path: Path) -> None:
    child, logs = run_child(tmp_path, HUNG, 1, "test_case.py")

    assert child.returncode == 1, child.stdout + child.stderr
    assert "passed" not in child.stdout and "failed" not in child.stdout  # the process ended inside the test
    assert logs.startswith("test_case.py::test_out_of_the_alarms_reach was still running 2 s after it started")
    assert 'File "' in logs and "test_out_of_the_alarms_reach" in logs.partition("\n")[2]
    started = int((tmp_path / "started.pid").read_text())
    assert f"Ended with the processes it had started: [{started}]" in logs
    wait_for(lambda: not alive(started), CHILD_TIMEOUT, f"the end of process {started}, which the hung test started")


@pytest.mark.timeout(2 * CHILD_TIMEOUT)
def test_under_xdist_the_run_goes_on_and_the_hung_test_is_not_run_again(tmp_path: Path) -> None:
    child, logs = run_child(tmp_path, HUNG, 1, "-n", "2", "--dist", "loadfile", "-rA", other=QUICK)

    assert child.returncode == 1, child.stdout + child.stderr
    assert "crashed while running 'test_case.py::test_out_of_the_alarms_reach'" in child.stdout
    # The new worker is handed the module again: it fails the hung test at once and runs the rest.
    assert "hung in an earlier worker of this run" in child.stdout
    assert "PASSED test_case.py::test_after_it" in child.stdout
    assert "PASSED test_other.py::test_finishes" in child.stdout
    assert logs.count("was still running") == 1


@pytest.mark.timeout(2 * CHILD_TIMEOUT)
def test_a_test_the_alarm_ends_fails_as_a_timeout_and_leaves_no_stacks(tmp_path: Path) -> None:
    child, logs = run_child(
        tmp_path, INTERRUPTIBLE, 60, "test_case.py"
    )  # ample time for the alarm's failure to be reported

    assert child.returncode == 1, child.stdout + child.stderr
    assert "Timeout" in child.stdout and "1 failed" in child.stdout
    assert logs == ""


@pytest.mark.timeout(2 * CHILD_TIMEOUT)
def test_a_test_that_finishes_leaves_no_stacks(tmp_path: Path) -> None:
    child, logs = run_child(tmp_path, QUICK, 1, "test_case.py")

    assert child.returncode == 0, child.stdout + child.stderr
    assert "1 passed" in child.stdout
    assert logs == ""


@pytest.mark.timeout(2 * CHILD_TIMEOUT)
def test_the_watchdog_stands_until_the_alarm_is_cancelled(tmp_path: Path) -> None:
    child, logs = run_child(tmp_path, DISARM_WATCHED, 1, "test_case.py")

    assert child.returncode == 0, child.stdout + child.stderr
    # No alarm can fire once the watchdog is disarmed: pytest-timeout cancelled its timer first.
    assert float((tmp_path / "alarm-left-at-disarm.txt").read_text()) == 0.0
    assert logs == ""
