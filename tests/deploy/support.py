"""What the deployment tests share: paths, the tools they drive, and the names the kit may use.

Every key a deployment file sets is a setting of the service or a documented infrastructure key
(:data:`INFRASTRUCTURE_KEYS`); every metric the alerts and the dashboard read is in the contract, one the
service documents beyond it (:data:`DESCRIBED_METRICS`), or one Prometheus makes itself. Nothing is tolerated
while "pending": a tool that is missing skips locally and fails in CI (:func:`tool`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from library_api.config import Settings
from tests.support.measure import unmeasured
from tests.support.services import unavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent

INFRASTRUCTURE_KEYS: dict[str, str] = {
    "POSTGRES_DB": "the PostgreSQL container's database; compose.yaml builds DATABASE_URL from it",
    "POSTGRES_USER": "the PostgreSQL container's user; compose.yaml builds DATABASE_URL from it",
    "POSTGRES_PASSWORD": "the PostgreSQL container's password; compose.yaml builds DATABASE_URL from it",
    "REDIS_PASSWORD": "the Redis container's password; compose.yaml builds REDIS_URL from it",
    "REDISCLI_AUTH": "redis-cli's password in the Redis container's health check",
    "DATA_SOURCE_URI": "compose.yaml: postgres-exporter's database address (host:port/database?options)",
    "DATA_SOURCE_USER": "compose.yaml: postgres-exporter's database user",
    "DATA_SOURCE_PASS": "compose.yaml: postgres-exporter's database password",
    "REDIS_ADDR": "compose.yaml: redis-exporter's Redis address",
    "GRAFANA_ADMIN_USER": "Grafana's administrator",
    "GRAFANA_ADMIN_PASSWORD": "Grafana's administrator password",
    "GRAFANA_PASSWORD": "the seed's name for GRAFANA_ADMIN_PASSWORD; compose.yaml reads it when that is unset",
    "ALERTMANAGER_WEBHOOK_URL": "deploy/deploy.sh: the webhook receiver's URL in Alertmanager's configuration",
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
    "HEALTHCHECK_CERT_FILE": "deploy/healthcheck.py: the probe's client certificate in mtls mode",
    "HEALTHCHECK_KEY_FILE": "deploy/healthcheck.py: the key of the probe's client certificate",
    "LIBRARY_API_IMAGE": "compose.yaml and deploy/deploy.sh: the image to run",
    "TLS_CERTS_DIR": "compose.yaml: nginx's certificate directory",
    "BACKUP_DIR": "compose.yaml and deploy/backup.sh: where dumps go",
    "BACKUP_RETENTION_DAYS": "deploy/backup.sh and the backup CronJob: days of dumps kept",
    "PYTHONPATH": "compose.dev.yaml: the mounted source shadows the installed package",
}
"""Keys that deployment files set which are not settings of the service, with who reads each."""

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

DESCRIBED_METRICS: dict[str, str] = {
    "websocket_connections": "open WebSocket connections (docs/operations.md, Metrics)",
    "websocket_messages_sent_total": "WebSocket messages sent (docs/operations.md, Metrics)",
    "websocket_drops_total": "WebSocket clients dropped or messages dropped (docs/operations.md, Metrics)",
    "cache_hits_total": "catalogue answers from the cache (docs/operations.md, Metrics)",
    "cache_misses_total": "catalogue answers from the database (docs/operations.md, Metrics)",
    "health_ready": "the latest readiness check (docs/operations.md, Metrics)",
    "live_event_outbox_depth": "live events waiting to be published (docs/operations.md, Metrics)",
    "live_event_outbox_oldest_age_seconds": "how long live events have waited to be published (docs/operations.md)",
}
"""Metrics the dashboard and alerts read that the seed's contract describes without naming, with where the service
documents each; the service exports every one (``test_alerts_and_dashboard_read_metrics_the_service_exports``)."""

PROMETHEUS_SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
"""Series Prometheus makes itself for every target."""

EXPORTER_METRICS: dict[str, frozenset[str]] = {
    "postgres": frozenset(
        {
            "pg_up",
            "pg_stat_database_numbackends",
            "pg_settings_max_connections",
            "pg_stat_database_xact_commit",
            "pg_stat_database_xact_rollback",
            "pg_stat_database_deadlocks",
            "pg_stat_database_blks_hit",
            "pg_stat_database_blks_read",
            "pg_database_size_bytes",
        }
    ),
    "redis": frozenset(
        {
            "redis_up",
            "redis_memory_used_bytes",
            "redis_memory_max_bytes",
            "redis_connected_clients",
            "redis_commands_processed_total",
            "redis_evicted_keys_total",
            "redis_expired_keys_total",
            "redis_keyspace_hits_total",
            "redis_keyspace_misses_total",
        }
    ),
    "node": frozenset(
        {
            "node_cpu_seconds_total",
            "node_load1",
            "node_load5",
            "node_memory_MemAvailable_bytes",
            "node_memory_MemTotal_bytes",
            "node_filesystem_avail_bytes",
            "node_filesystem_size_bytes",
            "node_filesystem_readonly",
        }
    ),
}
"""Exporter metrics the alerts and the dashboard may read, by scrape job: names taken from the /metrics of the
Debian packages' exporters (prometheus-postgres-exporter 0.11, prometheus-redis-exporter 1.45,
prometheus-node-exporter 1.5, the versions the Compose images pin). tests/e2e/test_monitoring_stack.py checks
each against the running exporter, so a name here that an exporter does not export fails there."""

ALL_EXPORTER_METRICS: frozenset[str] = frozenset().union(*EXPORTER_METRICS.values())
"""Every name of :data:`EXPORTER_METRICS`."""


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
    )
    results: list[dict[str, Any]] = json.loads(result.stdout)
    return results


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
    """Why ``key`` does not belong in a deployment file, or None when it is a setting or infrastructure."""
    if key in settings_keys() or key in INFRASTRUCTURE_KEYS:
        return None
    return f"{key}: not a setting of the service (library_api/config/settings.py) nor a documented infrastructure key"


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
