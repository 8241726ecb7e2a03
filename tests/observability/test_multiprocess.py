"""Several worker processes: values summed across processes, dead workers folded, nothing counted twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from library_api.config import Settings
from library_api.observability import multiprocess
from library_api.observability.metrics import Metrics

pytestmark = pytest.mark.children_unmeasured

WORKER = """
import sys
from pathlib import Path
from library_api.observability.metrics import Metrics

metrics = Metrics(multiprocess_dir=Path(sys.argv[1]))
assert metrics.multiprocess_dir is not None, "the client library did not see PROMETHEUS_MULTIPROC_DIR"
for _ in range(int(sys.argv[2])):
    metrics.observe_request("GET", "/api/v1/books", 200, 0.02)
metrics.books_created.inc()
metrics.in_progress("GET", "/api/v1/books").inc()
metrics.ws_connections.inc(2)
print("ready", flush=True)
if sys.argv[3] == "stay":
    sys.stdin.read()
"""


def run_worker(directory: Path, requests: int, *, stay: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, multiprocess.ENVIRONMENT_VARIABLE: str(directory)}
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(directory), str(requests), "stay" if stay else "exit"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    if not stay:
        finish(process)
    return process


def finish(process: subprocess.Popen[str]) -> None:
    """Let the worker exit and close its pipes."""
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.close()
    assert process.wait(timeout=60) == 0
    process.stdout.close()


def scrape(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(multiprocess.LockedMultiProcessCollector(directory))
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


REQUESTS = ("http_requests_total", (("endpoint", "/api/v1/books"), ("method", "GET"), ("status", "200")))
IN_PROGRESS = ("http_requests_in_progress", (("endpoint", "/api/v1/books"), ("method", "GET")))
DURATION_COUNT = ("http_request_duration_seconds_count", (("endpoint", "/api/v1/books"), ("method", "GET")))


def test_values_of_live_and_dead_workers_add_up_and_dead_ones_are_folded(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    multiprocess.prepare_directory(directory)
    first = run_worker(directory, 3)
    second = run_worker(directory, 4)
    alive = run_worker(directory, 5, stay=True)
    try:
        before = scrape(directory)
        assert before[REQUESTS] == 12
        assert before[DURATION_COUNT] == 12
        assert before[("books_created_total", ())] == 3
        assert before[IN_PROGRESS] == 3  # live gauges of dead workers are still there until collected

        folded = multiprocess.collect_dead_workers(directory)
        assert sorted(folded) == sorted([first.pid, second.pid])
        names = {path.name for path in directory.glob("*.db")}
        assert {"counter_archive.db", "histogram_archive.db"} <= names
        assert not any(str(first.pid) in name or str(second.pid) in name for name in names)
        assert multiprocess.live_worker_pids(directory) == {alive.pid}

        after = scrape(directory)
        assert after[REQUESTS] == 12  # totals never go backwards
        assert after[DURATION_COUNT] == 12
        assert after[("books_created_total", ())] == 3
        assert after[IN_PROGRESS] == 1  # only the live worker's request is still in progress
        assert after[("websocket_connections", ())] == 2

        third = run_worker(directory, 1)
        multiprocess.collect_dead_workers(directory)
        assert scrape(directory)[REQUESTS] == 13  # folded again into the same archive
        assert third.returncode == 0
    finally:
        finish(alive)


def test_prepare_empties_the_directory_and_exports_it(tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "counter_1234.db").write_bytes(b"old")
    saved = os.environ.get(multiprocess.ENVIRONMENT_VARIABLE)
    try:
        chosen = multiprocess.prepare_worker_metrics(Settings(prometheus_multiproc_dir=stale))
        assert chosen == stale
        assert list(stale.glob("*.db")) == []
        assert os.environ[multiprocess.ENVIRONMENT_VARIABLE] == str(stale)
        private = multiprocess.prepare_worker_metrics(Settings())
        assert private.is_dir()
        assert private.name.startswith("library-api-metrics-")
    finally:
        if saved is None:
            os.environ.pop(multiprocess.ENVIRONMENT_VARIABLE, None)
        else:
            os.environ[multiprocess.ENVIRONMENT_VARIABLE] = saved


def test_a_directory_from_a_file_cannot_switch_a_running_process_to_files(tmp_path: Path) -> None:
    metrics = Metrics(multiprocess_dir=tmp_path)  # the test process imported the client without the variable
    assert metrics.multiprocess_dir is None
    metrics.http_requests.labels("GET", "/x", "200").inc()
    assert b'http_requests_total{endpoint="/x",method="GET",status="200"} 1.0' in metrics.expose(None)[0]
