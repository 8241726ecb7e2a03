"""What the deployment tests share: paths, the tools they drive, and what the service really provides.

The deployment kit is written against the contracts of pieces built alongside it (metrics and probes,
server adapters with their Gunicorn worker, WebSockets). Checks that need such a piece ask the running code
whether it is there (:func:`capabilities`) instead of trusting a version number, and skip with the reason while
it is not; :data:`PENDING_KEYS` and :data:`PENDING_METRICS` are tolerated only while their piece is missing.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from library_api.config import Settings
from tests.support.measure import unmeasured
from tests.support.services import unavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent

SECURITY_ISSUE = "issue 3 (security modes, server adapters, Gunicorn worker)"
REALTIME_ISSUE = "issue 4 (WebSockets, graceful drain, e-mail)"
OBSERVABILITY_ISSUE = "issue 5 (metrics, probes, cache, hardening)"
FORWARDED_CERT_ISSUE = "the forwarded-certificate fix (FORWARDED_CERT_PROXIES, verified against TLS_CA_FILE)"

INFRASTRUCTURE_KEYS: dict[str, str] = {
    "POSTGRES_DB": "the PostgreSQL container's database; compose.yaml builds DATABASE_URL from it",
    "POSTGRES_USER": "the PostgreSQL container's user; compose.yaml builds DATABASE_URL from it",
    "POSTGRES_PASSWORD": "the PostgreSQL container's password; compose.yaml builds DATABASE_URL from it",
    "REDIS_PASSWORD": "the Redis container's password; compose.yaml builds REDIS_URL from it",
    "REDISCLI_AUTH": "redis-cli's password in the Redis container's health check",
    "GRAFANA_ADMIN_USER": "Grafana's administrator",
    "GRAFANA_ADMIN_PASSWORD": "Grafana's administrator password",
    "PROMETHEUS_MULTIPROC_DIR": "read by prometheus_client itself; emptied and maintained by deploy/gunicorn.conf.py",
    "WEB_CONCURRENCY": "deploy/gunicorn.conf.py: worker processes",
    "WORKERS_PER_CORE": "deploy/gunicorn.conf.py: workers per usable CPU",
    "TIMEOUT": "deploy/gunicorn.conf.py: worker heartbeat limit",
    "GRACEFUL_TIMEOUT": "deploy/gunicorn.conf.py: time a stopping worker is granted",
    "KEEPALIVE": "deploy/gunicorn.conf.py: idle keep-alive",
    "HTTP_TIMEOUT_KEEP_ALIVE": "deploy/gunicorn.conf.py: Uvicorn's name for KEEPALIVE, read when KEEPALIVE is unset",
    "MAX_REQUESTS": "deploy/gunicorn.conf.py: worker recycling",
    "MAX_REQUESTS_JITTER": "deploy/gunicorn.conf.py: worker recycling jitter",
    "LIMIT_REQUEST_LINE": "deploy/gunicorn.conf.py: request line limit",
    "LIMIT_REQUEST_FIELDS": "deploy/gunicorn.conf.py: header count limit",
    "LIMIT_REQUEST_FIELD_SIZE": "deploy/gunicorn.conf.py: header size limit",
    "GUNICORN_WORKER_CLASS": "deploy/gunicorn.conf.py: worker class override",
    "LIBRARY_API_IMAGE": "compose.yaml and deploy/deploy.sh: the image to run",
    "TLS_CERTS_DIR": "compose.yaml: nginx's certificate directory",
    "BACKUP_DIR": "compose.yaml and deploy/backup.sh: where dumps go",
    "BACKUP_RETENTION_DAYS": "deploy/backup.sh and the backup CronJob: days of dumps kept",
    "PYTHONPATH": "compose.dev.yaml: the mounted source shadows the installed package",
}
"""Keys that deployment files set which are not settings of the service, with who reads each."""

PENDING_KEYS: dict[str, str] = {
    "TRUSTED_PROXIES": SECURITY_ISSUE,
    "FORWARDED_CERT_PROXIES": FORWARDED_CERT_ISSUE,
    "BROADCAST_INTERVAL": REALTIME_ISSUE,
    "WS_MAX_SIZE": REALTIME_ISSUE,
    "WS_PING_INTERVAL": REALTIME_ISSUE,
    "WS_PING_TIMEOUT": REALTIME_ISSUE,
    "SMTP_HOST": REALTIME_ISSUE,
    "SMTP_PORT": REALTIME_ISSUE,
    "SMTP_USER": REALTIME_ISSUE,
    "SMTP_PASSWORD": REALTIME_ISSUE,
    "EMAIL_FROM": REALTIME_ISSUE,
    "EMAIL_FROM_NAME": REALTIME_ISSUE,
    "METRICS_ENABLED": OBSERVABILITY_ISSUE,
    "SENTRY_DSN": OBSERVABILITY_ISSUE,
    "CACHE_ENABLED": OBSERVABILITY_ISSUE,
    "CACHE_TYPE": OBSERVABILITY_ISSUE,
    "CACHE_DEFAULT_TIMEOUT": OBSERVABILITY_ISSUE,
    "CACHE_KEY_PREFIX": OBSERVABILITY_ISSUE,
}
"""Settings named by the issues still in progress; accepted only while that issue's piece is missing."""

CONTRACT_METRICS = frozenset(
    {
        "http_requests_total",
        "http_request_duration_seconds",
        "http_requests_in_progress",
        "books_created_total",
        "users_registered_total",
        "bookings_created_total",
        "db_query_duration_seconds",
        "db_connections",
        "system_cpu_usage_percent",
        "system_memory_usage_bytes",
        "system_disk_usage_bytes",
    }
)
"""Metric families the service exports by contract (seed 002's names)."""

PENDING_METRICS: dict[str, str] = {
    "websocket_connections": OBSERVABILITY_ISSUE,
    "websocket_messages_sent_total": OBSERVABILITY_ISSUE,
    "websocket_drops_total": OBSERVABILITY_ISSUE,
    "cache_hits_total": OBSERVABILITY_ISSUE,
    "cache_misses_total": OBSERVABILITY_ISSUE,
    "health_ready": OBSERVABILITY_ISSUE,
}
"""Names the dashboard and alerts use for metrics the contract describes without naming them."""

PROMETHEUS_SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
"""Series Prometheus makes itself for every target."""


@dataclass(frozen=True)
class Capabilities:
    """Which pieces of the service are present in the code that is installed now."""

    metrics_route: bool
    startup_probe: bool
    websocket_route: bool
    server_option: bool
    gunicorn_worker: str | None

    def landed(self, issue: str) -> bool:
        """Whether the piece an issue delivers is present (its contract's marker)."""
        if issue == SECURITY_ISSUE:
            return self.server_option
        if issue == REALTIME_ISSUE:
            return self.websocket_route
        if issue == FORWARDED_CERT_ISSUE:
            return "forwarded_cert_proxies" in Settings.model_fields
        return self.metrics_route


_PROBE = """
import asyncio, inspect, json, sys, tempfile
from fastapi.routing import iter_route_contexts
from library_api.app import create_app
from library_api.cli.main import serve
from library_api.config import Settings
with tempfile.TemporaryDirectory() as directory:
    app = create_app(Settings(database_url=f"sqlite+aiosqlite:///{directory}/routes.db"))
    paths = sorted({str(context.path) for context in iter_route_contexts(app.routes)})
    asyncio.run(app.state.context.database.dispose())
json.dump({"paths": paths, "serve": sorted(inspect.signature(serve).parameters)}, sys.stdout)
"""


@functools.cache
def capabilities() -> Capabilities:
    """Ask the code, in a separate process: the application's routes, ``serve``'s options, the Gunicorn worker."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True, env=unmeasured()
    )
    found = json.loads(result.stdout)
    paths = set(found["paths"])
    return Capabilities(
        metrics_route="/metrics" in paths,
        startup_probe="/health/startup" in paths,
        websocket_route=any(path.startswith("/ws/") for path in paths),
        server_option="server" in found["serve"],
        gunicorn_worker=library_worker_class(),
    )


_RESOLVE = """
import contextlib, io, json, os, sys
from gunicorn.app.wsgiapp import WSGIApplication
config_file, cases = json.load(sys.stdin)
results = []
for env in cases:
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["gunicorn", "--config", config_file]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            application = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]")
    except SystemExit as exc:
        results.append({"exit": exc.code, "stderr": errors.getvalue()})
        continue
    settings = {name: setting.get() for name, setting in application.cfg.settings.items()}
    settings["worker_class"] = application.cfg.worker_class_str
    results.append({"exit": 0, "stderr": errors.getvalue(), "settings": {k: repr(v) for k, v in settings.items()}})
json.dump(results, sys.stdout)
"""


def resolve_gunicorn_configs(cases: list[dict[str, str]], cwd: Path) -> list[dict[str, Any]]:
    """Load deploy/gunicorn.conf.py through Gunicorn's own configuration loader once per environment in
    ``cases`` (one process for all of them): each result has ``exit``, ``stderr`` and, when it loaded,
    ``settings`` (each value's ``repr``)."""
    result = subprocess.run(
        [sys.executable, "-c", _RESOLVE],
        input=json.dumps([str(DEPLOY / "gunicorn.conf.py"), cases]),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=True,
        env=unmeasured(),  # it only reads configuration; the code it imports is measured in process
    )
    results: list[dict[str, Any]] = json.loads(result.stdout)
    return results


def library_worker_class() -> str | None:
    """The worker class deploy/gunicorn.conf.py finds in ``library_api.server`` (None: it falls back)."""
    env = {key: value for key, value in os.environ.items() if key != "GUNICORN_WORKER_CLASS"}
    with tempfile.TemporaryDirectory() as empty:
        (loaded,) = resolve_gunicorn_configs([env], Path(empty))
    assert loaded["exit"] == 0, loaded["stderr"]
    chosen = str(loaded["settings"]["worker_class"]).strip("'")
    return None if chosen == "uvicorn.workers.UvicornWorker" else chosen


def tool(name: str) -> str:
    """The path of a command-line tool from the virtual environment or the system; skip when it is missing.

    nginx and promtool come from Debian packages that ``.ci/run`` installs, so in CI they are always there.
    """
    found = shutil.which(name, path=f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        unavailable(f"{name} is not installed (.ci/run installs it)")
    assert found is not None
    return found


def run(*command: str | Path, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool (a linter, a validator, nginx -t), capturing its output as text (never raising on a non-zero exit).

    Tools run none of the service's code, so coverage does not measure them (``tests.support.measure``).
    """
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
        env=unmeasured(),
    )


def load_yaml(path: Path) -> Any:
    """One YAML document."""
    return yaml.safe_load(path.read_text())


def settings_keys() -> set[str]:
    """The environment names of every setting of the service."""
    return {name.upper() for name in Settings.model_fields}


def check_key(key: str) -> str | None:
    """Why ``key`` does not belong in a deployment file, or None when it is a setting, infrastructure or pending."""
    if key in settings_keys() or key in INFRASTRUCTURE_KEYS:
        return None
    if key in PENDING_KEYS:
        issue = PENDING_KEYS[key]
        if not capabilities().landed(issue):
            return None
        return f"{key}: {issue} has landed but has no such setting; use its real name"
    return f"{key}: not a setting of the service (src/library_api/config.py) nor a documented infrastructure key"


_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_PROMQL_WORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "le",
    }
)


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, strings, grouping and functions removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expression)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _METRIC.finditer(text):
        word = match.group()
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in _PROMQL_WORDS or word.startswith("$"):
            continue
        if text[max(match.start() - 1, 0)] == "$":
            continue
        names.add(word)
    return names


def family_of(name: str) -> str:
    """The metric family a series name belongs to (histogram and summary suffixes removed)."""
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def parse_exposition(text: str) -> set[str]:
    """Every series name a Prometheus text exposition can produce, from its ``# TYPE`` lines and samples."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
            if kind in {"histogram", "summary"}:
                names.update({f"{name}_bucket", f"{name}_count", f"{name}_sum"})
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def skip_unless(condition: bool, reason: str) -> None:
    """Skip the calling test with ``reason`` (a piece not merged yet) unless ``condition`` holds."""
    if not condition:
        pytest.skip(reason)
