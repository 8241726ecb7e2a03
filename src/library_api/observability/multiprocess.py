"""Metrics with several worker processes: one directory of per-process files, summed at each scrape.

The Prometheus client writes each process's values to ``<type>_<pid>.db`` files in ``PROMETHEUS_MULTIPROC_DIR``
when that variable is in the environment before the process starts; any worker answering ``/metrics`` reads
them all. Three chores keep that correct over a long life with restarted workers:

* :func:`prepare_directory` empties the directory before the workers start (old files would be counted again);
  ``library-api serve`` calls it, and a Gunicorn configuration calls it from ``on_starting``.
* :func:`mark_worker_dead` is run for every worker that is gone, whoever noticed: at each scrape for pids that
  no longer exist (:func:`collect_dead_workers`), and from a Gunicorn ``child_exit`` hook. It removes the dead
  worker's live gauges (its in-progress requests, open connections) and folds its counters and histograms into
  ``*_archive.db`` files, so totals never go backwards and the directory does not grow with every restart.
* Folding and reading hold a lock on the directory, so a scrape never sees a worker's counts twice or not at all.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from library_api.config import Settings

logger = logging.getLogger("library_api.metrics")

ENVIRONMENT_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""The variable the Prometheus client reads when it is imported."""

# The client library's multi-process helpers carry no type annotations; these are their typed faces.
_read_file: Callable[[str], Iterable[tuple[str, float, float, int]]] = MmapedDict.read_all_values_from_file
_open_file: Callable[[str], Any] = MmapedDict
_forget_live_gauges: Callable[[int, str], None] = mark_process_dead
_file_collector: Callable[..., Any] = MultiProcessCollector

_LOCK_FILE = ".lock"
_FILE_PATTERN = re.compile(r"^(?P<prefix>[a-z]+(?:_[a-z]+)?)_(?P<pid>\d+)\.db$")
_FOLDED_TYPES = frozenset({"counter", "histogram", "summary"})


def prepare_worker_metrics(settings: Settings) -> Path:
    """Before starting worker processes: an empty metrics directory, named in the environment they inherit.

    ``PROMETHEUS_MULTIPROC_DIR`` when configured, else a fresh private directory, so several workers are
    always counted correctly without any configuration.
    """
    directory = settings.prometheus_multiproc_dir or Path(tempfile.mkdtemp(prefix="library-api-metrics-"))
    prepare_directory(directory)
    export_directory(directory)
    logger.info("metrics of the worker processes are collected in %s", directory)
    return directory


def prepare_directory(directory: Path) -> None:
    """Create the directory if needed and remove every file a previous run left behind."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)


def export_directory(directory: Path) -> None:
    """Put ``directory`` in this process's environment, for the worker processes it is about to start."""
    os.environ[ENVIRONMENT_VARIABLE] = str(directory)


@contextmanager
def _locked(directory: Path, operation: int) -> Iterator[None]:
    with (directory / _LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, operation)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _worker_files(directory: Path) -> Iterator[tuple[Path, str, int]]:
    for path in directory.glob("*.db"):
        match = _FILE_PATTERN.match(path.name)
        if match is not None:
            yield path, match["prefix"], int(match["pid"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_worker_pids(directory: Path) -> set[int]:
    """Pids that have written metrics and are still running."""
    return {pid for _, _, pid in _worker_files(directory) if _pid_alive(pid)}


def mark_worker_dead(pid: int, directory: Path) -> None:
    """Forget a finished worker's live gauges and fold its counters and histograms into the archive files."""
    with _locked(directory, fcntl.LOCK_EX):
        _forget_live_gauges(pid, str(directory))
        for path, prefix, file_pid in list(_worker_files(directory)):
            if file_pid != pid or prefix not in _FOLDED_TYPES:
                continue
            _fold_into(path, directory / f"{prefix}_archive.db")
            path.unlink()


def _fold_into(source: Path, archive: Path) -> None:
    totals = {key: (value, timestamp) for key, value, timestamp, _ in _read_file(str(source))}
    target = _open_file(str(archive))
    try:
        for key, (value, timestamp) in totals.items():
            current, _ = target.read_value(key)
            target.write_value(key, current + value, timestamp)
    finally:
        target.close()


def mark_process_dead_gauges(directory: Path) -> None:
    """Remove this process's live gauges as it exits (its counters stay until it is gone and folded)."""
    with _locked(directory, fcntl.LOCK_EX):
        _forget_live_gauges(os.getpid(), str(directory))


def collect_dead_workers(directory: Path) -> list[int]:
    """Run :func:`mark_worker_dead` for every pid with files that is no longer running; return those pids."""
    dead = sorted({pid for _, _, pid in _worker_files(directory) if not _pid_alive(pid)})
    for pid in dead:
        mark_worker_dead(pid, directory)
        logger.info("metrics of finished worker %d folded into the archive", pid)
    return dead


class LockedMultiProcessCollector(Collector):
    """The client's multi-process collector, reading under the directory lock that folding takes exclusively."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._files = _file_collector(None, path=str(directory))

    def collect(self) -> Iterable[Metric]:
        """Sum every worker's file (and the archive) while no fold is under way."""
        with _locked(self._directory, fcntl.LOCK_SH):
            metrics: list[Metric] = list(self._files.collect())
        return metrics
