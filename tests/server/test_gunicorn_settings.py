"""Gunicorn's process settings, one source for deploy/gunicorn.conf.py and ``serve --server gunicorn``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from library_api.config import OVERRIDES_ENV, ConfigError
from library_api.server.gunicorn import gunicorn_options
from library_api.server.gunicorn_settings import hand_down_workers, process_options, with_workers
from tests.conftest import fast_settings
from tests.support.cli import invoke


def one_core(tmp_path: Path) -> Path:
    """A cgroup v2 directory whose CPU quota is one core."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cpu.max").write_text("100000 100000\n")
    return root


def test_the_defaults_outlast_the_drain_and_the_proxy(tmp_path: Path) -> None:
    options = process_options(fast_settings(shutdown_timeout=100), {}, cgroup_root=one_core(tmp_path))
    assert options == {
        "workers": 2,
        "graceful_timeout": 130,
        "timeout": 60,
        "keepalive": 75,
        "max_requests": 10_000,
        "max_requests_jitter": 1000,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "worker_tmp_dir": "/dev/shm" if os.access("/dev/shm", os.W_OK) else None,
    }


def test_workers_come_from_the_argument_then_web_concurrency_then_the_cores(tmp_path: Path) -> None:
    settings, root = fast_settings(), one_core(tmp_path)
    assert process_options(settings, {"WEB_CONCURRENCY": "5"}, workers=3, cgroup_root=root)["workers"] == 3
    assert process_options(settings, {"WEB_CONCURRENCY": "5"}, cgroup_root=root)["workers"] == 5
    assert process_options(settings, {"WORKERS_PER_CORE": "3"}, cgroup_root=root)["workers"] == 3
    assert process_options(settings, {"WORKERS_PER_CORE": "0.5"}, cgroup_root=root)["workers"] == 2


def test_every_bad_key_is_one_line(tmp_path: Path) -> None:
    environ = {
        "TIMEOUT": "soon",
        "KEEPALIVE": "0",
        "WORKERS_PER_CORE": "many",
        "MAX_REQUESTS": "-1",
        "GRACEFUL_TIMEOUT": "102",
    }
    with pytest.raises(ConfigError) as raised:
        process_options(fast_settings(shutdown_timeout=100), environ, cgroup_root=one_core(tmp_path))
    assert raised.value.problems == [
        "WORKERS_PER_CORE: must be a number (got 'many')",
        "MAX_REQUESTS: must be at least 0 (got -1)",
        "GRACEFUL_TIMEOUT: must exceed SHUTDOWN_TIMEOUT (100 s) by at least 5 s, or Gunicorn kills workers that "
        "are still draining (got 102; leave it unset for 130)",
        "TIMEOUT: must be a whole number (got 'soon')",
        "KEEPALIVE: must be at least 1 (got 0)",
    ]
    with pytest.raises(ConfigError, match="WORKERS_PER_CORE: must be greater than 0"):
        process_options(fast_settings(), {"WORKERS_PER_CORE": "0"})


def test_an_explicit_graceful_timeout_above_the_drain_is_kept() -> None:
    options = process_options(fast_settings(shutdown_timeout=100), {"GRACEFUL_TIMEOUT": "300", "MAX_REQUESTS": "0"})
    assert (options["graceful_timeout"], options["max_requests"], options["max_requests_jitter"]) == (300, 0, 0)


def test_the_workers_are_checked_with_their_real_count() -> None:
    settings = fast_settings()
    assert with_workers(settings, settings.workers) is settings
    assert with_workers(settings, 3).workers == 3
    with pytest.raises(ConfigError, match="CACHE_TYPE: the in-process cache cannot be invalidated across 3 workers"):
        with_workers(fast_settings(cache_type="memory"), 3)


def test_the_count_is_handed_down_with_the_other_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OVERRIDES_ENV, json.dumps({"port": 9000}))
    hand_down_workers(4)
    assert json.loads(os.environ[OVERRIDES_ENV]) == {"port": 9000, "workers": 4}
    monkeypatch.setenv(OVERRIDES_ENV, "not json")
    hand_down_workers(2)
    assert json.loads(os.environ[OVERRIDES_ENV]) == {"workers": 2}


def test_serve_uses_the_same_process_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    monkeypatch.setenv("KEEPALIVE", "90")
    implicit = gunicorn_options(fast_settings())
    assert (implicit["workers"], implicit["keepalive"]) == (5, 90)
    explicit = gunicorn_options(fast_settings(workers=3, host="::1", port=8123))
    assert (explicit["workers"], explicit["bind"]) == (3, ["[::1]:8123"])
    assert explicit["worker_class"] == "library_api.server.gunicorn.LibraryWorker"


def test_serve_refuses_a_bad_gunicorn_key_before_any_port_opens(tmp_path: Path) -> None:
    result = invoke(
        ["serve", "--server", "gunicorn"],
        {"TIMEOUT": "soon", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/library.db"},
    )
    assert result.returncode == 2
    assert "error: TIMEOUT: must be a whole number (got 'soon')" in result.stderr
