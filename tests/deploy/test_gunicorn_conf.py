"""deploy/gunicorn.conf.py as Gunicorn resolves it (``--print-config``), and run for real: workers, drain-aware
timeouts, refusal of inconsistent settings, JSON logs, Prometheus multiprocess clean-up."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from library_api.server.gunicorn_settings import available_cores
from tests.deploy.processes import running
from tests.deploy.support import DEPLOY, VENV_BIN, resolve_gunicorn_configs
from tests.support.measure import unmeasured
from tests.support.polling import wait_answering, wait_for
from tests.support.ports import listening_socket, port_of

pytestmark = pytest.mark.children_unmeasured

CONTROLLED = {
    "WEB_CONCURRENCY",
    "WORKERS_PER_CORE",
    "GRACEFUL_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "TIMEOUT",
    "KEEPALIVE",
    "HTTP_TIMEOUT_KEEP_ALIVE",
    "MAX_REQUESTS",
    "MAX_REQUESTS_JITTER",
    "GUNICORN_WORKER_CLASS",
    "HOST",
    "PORT",
    "LOG_FORMAT",
    "PROMETHEUS_MULTIPROC_DIR",
}


def environment(**values: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in CONTROLLED}
    env.update(values)
    return env


CASES: dict[str, dict[str, str]] = {
    "default": {},
    "one per core": {"WORKERS_PER_CORE": "1"},
    "three per core": {"WORKERS_PER_CORE": "3"},
    "a tenth per core": {"WORKERS_PER_CORE": "0.1"},
    "five workers": {"WEB_CONCURRENCY": "5", "WORKERS_PER_CORE": "4"},
    "one worker": {"WEB_CONCURRENCY": "1"},
    "drain 100": {"SHUTDOWN_TIMEOUT": "100"},
    "drain 99.5": {"SHUTDOWN_TIMEOUT": "99.5"},
    "drain 100 grace 300": {"SHUTDOWN_TIMEOUT": "100", "GRACEFUL_TIMEOUT": "300"},
    "drain 100 grace 102": {"SHUTDOWN_TIMEOUT": "100", "GRACEFUL_TIMEOUT": "102"},
    "timeout soon": {"TIMEOUT": "soon"},
    "uvicorn keep-alive": {"HTTP_TIMEOUT_KEEP_ALIVE": "7"},
    "both keep-alives": {"HTTP_TIMEOUT_KEEP_ALIVE": "7", "KEEPALIVE": "9"},
    "zero workers": {"WEB_CONCURRENCY": "0"},
    "negative per core": {"WORKERS_PER_CORE": "-1"},
    "bad port": {"PORT": "99999"},
    "ipv6": {"HOST": "::1", "PORT": "8123", "MAX_REQUESTS": "500"},
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every case loaded by Gunicorn's own configuration loader, in one process."""
    names = list(CASES)
    results = resolve_gunicorn_configs(
        [environment(**CASES[name]) for name in names], tmp_path_factory.mktemp("gunicorn-conf")
    )
    return dict(zip(names, results, strict=True))


def resolved(outcomes: dict[str, dict[str, Any]], case: str) -> dict[str, str]:
    outcome = outcomes[case]
    assert outcome["exit"] == 0, outcome["stderr"]
    settings: dict[str, str] = outcome["settings"]
    return settings


def refused(outcomes: dict[str, dict[str, Any]], case: str) -> str:
    outcome = outcomes[case]
    assert outcome["exit"] == 2, outcome
    assert "Traceback" not in outcome["stderr"]
    message: str = outcome["stderr"].strip()
    return message


def test_workers_follow_the_usable_cores_and_never_drop_below_two(outcomes: dict[str, dict[str, Any]]) -> None:
    cores = available_cores()
    assert int(resolved(outcomes, "one per core")["workers"]) == max(2, cores)
    assert int(resolved(outcomes, "three per core")["workers"]) == max(2, 3 * cores)
    assert int(resolved(outcomes, "a tenth per core")["workers"]) == 2


def test_web_concurrency_is_honoured_as_given(outcomes: dict[str, dict[str, Any]]) -> None:
    assert resolved(outcomes, "five workers")["workers"] == "5"
    assert resolved(outcomes, "one worker")["workers"] == "1"


def test_cores_come_from_the_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert available_cores(v2) == min(affinity, 2)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert available_cores(v2) == affinity
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(v1) == 1
    assert available_cores(tmp_path / "missing") == affinity


def test_graceful_timeout_outlasts_the_websocket_drain(outcomes: dict[str, dict[str, Any]]) -> None:
    assert int(resolved(outcomes, "default")["graceful_timeout"]) == 1800 + 30
    assert int(resolved(outcomes, "drain 100")["graceful_timeout"]) == 130
    assert int(resolved(outcomes, "drain 99.5")["graceful_timeout"]) == math.ceil(99.5) + 30
    assert int(resolved(outcomes, "drain 100 grace 300")["graceful_timeout"]) == 300


def test_a_graceful_timeout_that_would_kill_a_draining_worker_is_refused(outcomes: dict[str, dict[str, Any]]) -> None:
    message = refused(outcomes, "drain 100 grace 102")
    assert message == (
        "error: GRACEFUL_TIMEOUT: must exceed SHUTDOWN_TIMEOUT (100 s) by at least 5 s, or Gunicorn kills workers "
        "that are still draining (got 102; leave it unset for 130)"
    )


def test_uvicorns_keep_alive_name_is_read_when_gunicorns_is_unset(outcomes: dict[str, dict[str, Any]]) -> None:
    assert resolved(outcomes, "uvicorn keep-alive")["keepalive"] == "7"
    assert resolved(outcomes, "both keep-alives")["keepalive"] == "9"


def test_bad_values_stop_start_up_with_one_line_each(outcomes: dict[str, dict[str, Any]]) -> None:
    assert refused(outcomes, "timeout soon") == "error: TIMEOUT: must be a whole number (got 'soon')"
    assert refused(outcomes, "zero workers") == "error: WEB_CONCURRENCY: must be at least 1 (got 0)"
    assert refused(outcomes, "negative per core") == "error: WORKERS_PER_CORE: must be greater than 0 (got -1)"
    port = refused(outcomes, "bad port")
    assert port.startswith("error: PORT: ")
    assert len(port.splitlines()) == 1


def test_the_rest_of_the_process_model(outcomes: dict[str, dict[str, Any]]) -> None:
    settings = resolved(outcomes, "ipv6")
    assert settings["bind"] == "['[::1]:8123']"
    assert settings["wsgi_app"] == "'library_api.server.asgi:create_app_from_environment()'"
    assert settings["preload_app"] == "False"
    assert settings["keepalive"] == "75"
    assert settings["timeout"] == "60"
    assert settings["max_requests"] == "500"
    assert settings["max_requests_jitter"] == "50"
    assert settings["control_socket_disable"] == "True"
    assert settings["accesslog"] == "None"
    assert settings["limit_request_line"] == "8190"
    assert settings["limit_request_fields"] == "100"
    assert "function child_exit" in settings["child_exit"]
    assert "function on_starting" in settings["on_starting"]
    assert "function when_ready" in settings["when_ready"]
    # the service's own worker, which drains WebSocket clients on SIGTERM (the stock one would cut them off)
    assert settings["worker_class"] == "'library_api.server.gunicorn.LibraryWorker'"


def children(pid: int) -> list[int]:
    return sorted(child.pid for child in psutil.Process(pid).children())


def test_gunicorn_runs_two_workers_and_keeps_the_metrics_directory_clean(tmp_path: Path) -> None:
    """Real Gunicorn with this configuration: stale files go at start, a dead worker's live gauges go with it."""
    listener = listening_socket()
    port = port_of(listener)
    metrics = tmp_path / "prometheus"
    metrics.mkdir()
    (metrics / "counter_424242.db").write_bytes(b"stale")
    env = environment(
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="2",
        SHUTDOWN_TIMEOUT="5",
        LOG_FORMAT="json",
        PROMETHEUS_MULTIPROC_DIR=str(metrics),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/library.db",
        AUTO_MIGRATE="false",
        SEED_SAMPLE_ON_EMPTY="false",
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    command = [str(VENV_BIN / "gunicorn"), "--config", str(DEPLOY / "gunicorn.conf.py")]
    command += ["--bind", f"fd://{listener.fileno()}"]  # the test's socket: no one else can answer on the port
    log = tmp_path / "gunicorn.log"
    with listener, running(command, log=log, env=env, cwd=tmp_path, pass_fds=(listener.fileno(),)) as master:
        listener.close()
        wait_answering(f"http://127.0.0.1:{port}/health", master, 120)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"] == "ok"
        assert not (metrics / "counter_424242.db").exists()
        wait_for(lambda: len(children(master.pid)) == 2, 20, "Gunicorn did not start 2 workers")

        victim = children(master.pid)[0]
        live_gauge = metrics / f"gauge_livesum_{victim}.db"
        live_gauge.write_bytes(b"live")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not live_gauge.exists(), 20, "the dead worker's live gauge file was not removed")
        wait_for(
            lambda: len(children(master.pid)) == 2 and victim not in children(master.pid),
            20,
            "Gunicorn did not replace the killed worker",
        )
        # Stop only once the replacement has booted: a worker signalled between fork and installing its own
        # handlers misses the signal, and the arbiter then waits out the whole graceful timeout.
        wait_for(
            lambda: log.read_text().count("Application startup complete") >= 3,
            30,
            "the replacement worker did not finish starting",
        )

        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=30) == 0

    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    listening = [json.loads(line) for line in lines if "Listening at" in line]
    assert listening, log.read_text()
    assert listening[0]["logger"] == "gunicorn.error"
    assert listening[0]["level"] == "info"
    assert any("1 stale file(s) removed" in json.loads(line)["message"] for line in lines)
    # Each worker's listening socket is closed once, by its event loop: no "Error while closing socket".
    assert not [line for line in lines if "Bad file descriptor" in line], log.read_text()


def test_the_image_health_check_script(tmp_path: Path) -> None:
    """deploy/healthcheck.py: 0 against a live /health, 1 with the reason when nothing answers."""
    listener = listening_socket()
    port = port_of(listener)
    script = [sys.executable, str(DEPLOY / "healthcheck.py")]

    def probe() -> subprocess.CompletedProcess[str]:
        # the script is no part of the package: coverage has nothing to measure in it
        return subprocess.run(
            script, env=unmeasured(environment(PORT=str(port))), capture_output=True, text=True, timeout=30, check=False
        )

    server_env = environment(
        HOST="127.0.0.1",
        PORT=str(port),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/library.db",
        AUTO_MIGRATE="false",
        SEED_SAMPLE_ON_EMPTY="false",
    )
    fd = listener.fileno()
    server = [str(VENV_BIN / "library-api"), "serve", "--fd", str(fd)]
    with listener, running(server, log=tmp_path / "serve.log", env=server_env, cwd=tmp_path, pass_fds=(fd,)) as process:
        listener.close()
        wait_answering(f"http://127.0.0.1:{port}/health", process, 120)
        up = probe()
        assert up.returncode == 0, up.stderr
    down = probe()
    assert down.returncode == 1
    assert f"health check failed: http://127.0.0.1:{port}/health" in down.stderr
