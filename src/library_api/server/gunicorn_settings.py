"""Gunicorn's process settings, read in one place for ``deploy/gunicorn.conf.py`` and ``serve --server gunicorn``.

Both ways of running Gunicorn take the same process-level keys from the environment (the names of the seed's
production ``.env``; they are not settings of the application): ``WEB_CONCURRENCY``, ``WORKERS_PER_CORE``,
``TIMEOUT``, ``GRACEFUL_TIMEOUT``, ``KEEPALIVE``, ``MAX_REQUESTS``, ``MAX_REQUESTS_JITTER``,
``LIMIT_REQUEST_LINE``, ``LIMIT_REQUEST_FIELDS``, ``LIMIT_REQUEST_FIELD_SIZE``. A bad value is a configuration
problem like any other: one line each, before any port is opened.

Why the numbers are what they are:

* **workers**: ``WEB_CONCURRENCY`` when set (an explicit operator choice, honoured as given); otherwise
  ``WORKERS_PER_CORE`` (default 1) times the cores this process may really use (CPU affinity and the cgroup
  CPU quota, not the host's core count), and never fewer than 2, so one busy worker never stalls the service.
  ``library-api serve --workers N`` (or ``WORKERS``) given explicitly comes first.
* **graceful_timeout**: Gunicorn's arbiter kills a worker that has not exited this many seconds after the stop
  signal, whatever it is doing. A worker first drains its WebSocket clients for up to ``SHUTDOWN_TIMEOUT``
  seconds, then finishes in-flight requests and closes its resources, so the default is
  ``SHUTDOWN_TIMEOUT + 30``; an explicit ``GRACEFUL_TIMEOUT`` that would cut a drain short is refused.
* **keepalive**: longer than the proxy's idle upstream timeout (nginx and ingress-nginx: 60 s), so the proxy
  always closes an idle connection first and never reuses one the worker is closing (a 502).
* **timeout**: the heartbeat limit; an event loop blocked this long is a dead worker and is replaced.
* **max_requests** with jitter: workers are recycled now and then, staggered, to bound slow leaks. A recycled
  worker drains like a stopping one, so WebSocket clients are asked to reconnect: keep it high, or 0 to turn
  recycling off, for WebSocket-heavy use.
* **limits** on the request line and header fields apply to Gunicorn's own HTTP parser.
* **worker_tmp_dir**: heartbeat files on tmpfs when there is one, so a full or slow disk never looks like a
  hung worker.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library_api.config import OVERRIDES_ENV, ConfigError, Settings, hand_down_overrides, validate_settings

GRACEFUL_MARGIN_SECONDS = 30
"""Time after the WebSocket drain for in-flight requests and the lifespan shutdown (database, broker, cache)."""

MIN_GRACEFUL_MARGIN_SECONDS = 5
"""An explicit ``GRACEFUL_TIMEOUT`` must exceed ``SHUTDOWN_TIMEOUT`` by at least this much."""

SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 - a directory for heartbeat files, not a file name to guess
"""tmpfs on Linux: where the workers' heartbeat files go when it is writable."""


@dataclass
class _Keys:
    """Reads the process keys from an environment, collecting one line per bad value."""

    environ: Mapping[str, str]
    problems: list[str] = field(default_factory=list)

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        """The whole number in ``name``, ``default`` when unset."""
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name}: must be a whole number (got {raw!r})")
            return default
        if value < minimum:
            self.problems.append(f"{name}: must be at least {minimum} (got {value})")
            return default
        return value

    def number(self, name: str, default: float) -> float:
        """The positive number in ``name``, ``default`` when unset."""
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.problems.append(f"{name}: must be a number (got {raw!r})")
            return default
        if not value > 0:
            self.problems.append(f"{name}: must be greater than 0 (got {raw})")
            return default
        return value


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: CPU affinity, further limited by a cgroup v2 or v1 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota (``cpu.max`` or ``cpu.cfs_quota_us``), or None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def _graceful_timeout(keys: _Keys, settings: Settings) -> int:
    """Seconds Gunicorn grants a stopping worker: longer than the drain, or a problem."""
    drain = math.ceil(settings.shutdown_timeout)
    explicit = keys.integer("GRACEFUL_TIMEOUT", 0, minimum=1)
    if not explicit:
        return drain + GRACEFUL_MARGIN_SECONDS
    if explicit < drain + MIN_GRACEFUL_MARGIN_SECONDS:
        keys.problems.append(
            f"GRACEFUL_TIMEOUT: must exceed SHUTDOWN_TIMEOUT ({drain} s) by at least "
            f"{MIN_GRACEFUL_MARGIN_SECONDS} s, or Gunicorn kills workers that are still draining "
            f"(got {explicit}; leave it unset for {drain + GRACEFUL_MARGIN_SECONDS})"
        )
    return explicit


def process_options(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    workers: int | None = None,
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> dict[str, Any]:
    """Gunicorn's process settings for the service: ``workers`` when given, the rest from the process keys.

    ``environ`` defaults to this process's environment. Raises :class:`~library_api.config.ConfigError` with
    one line per bad value.
    """
    keys = _Keys(os.environ if environ is None else environ)
    if workers is None:
        workers = keys.integer("WEB_CONCURRENCY", 0, minimum=1) or max(
            2, int(keys.number("WORKERS_PER_CORE", 1.0) * available_cores(cgroup_root))
        )
    max_requests = keys.integer("MAX_REQUESTS", 10_000)
    options: dict[str, Any] = {
        "workers": workers,
        "graceful_timeout": _graceful_timeout(keys, settings),
        "timeout": keys.integer("TIMEOUT", 60, minimum=1),
        "keepalive": keys.integer("KEEPALIVE", keys.integer("HTTP_TIMEOUT_KEEP_ALIVE", 75, minimum=1), minimum=1),
        "max_requests": max_requests,
        "max_requests_jitter": keys.integer("MAX_REQUESTS_JITTER", max_requests // 10),
        "limit_request_line": keys.integer("LIMIT_REQUEST_LINE", 8190, minimum=1),
        "limit_request_fields": keys.integer("LIMIT_REQUEST_FIELDS", 100, minimum=1),
        "limit_request_field_size": keys.integer("LIMIT_REQUEST_FIELD_SIZE", 8190, minimum=1),
        "worker_tmp_dir": str(SHARED_MEMORY) if os.access(SHARED_MEMORY, os.W_OK) else None,
    }
    if keys.problems:
        raise ConfigError(keys.problems)
    return options


def with_workers(settings: Settings, count: int) -> Settings:
    """``settings`` as the workers will see them, ``count`` of them: checked again, since some checks depend on it.

    Raises :class:`~library_api.config.ConfigError` (e.g. an in-process cache chosen for several workers).
    """
    if count == settings.workers:
        return settings
    updated = settings.model_copy(update={"workers": count})
    problems = validate_settings(updated)
    if problems:
        raise ConfigError(problems)
    return updated


def hand_down_workers(count: int) -> None:
    """Tell the worker processes about to start how many of them there are (their ``WORKERS`` setting).

    Added to the overrides this process hands down (``LIBRARY_API_OVERRIDES``), so each worker's settings say
    how many processes share the service: the in-process cache is off without Redis, and the checks that
    depend on the count apply.
    """
    try:
        inherited = json.loads(os.environ.get(OVERRIDES_ENV) or "{}")
    except ValueError:
        inherited = {}
    hand_down_overrides({**(inherited if isinstance(inherited, dict) else {}), "workers": count})
