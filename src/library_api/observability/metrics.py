"""Prometheus metrics: every series the service exports, defined once, owned by one application.

:class:`Metrics` builds the metric objects on a registry of its own, so that every application (and every test)
counts only its own requests. The names are a contract with dashboards and alert rules (see
``docs/operations.md``): HTTP traffic by method and *route template* (``/api/v1/books/{book_id}``, never the
raw path; requests that match no route share the label ``unmatched``), business counters, database query time
and pool use, WebSocket connections and messages, cache hits and misses, rate-limit rejections, the Redis
circuit, readiness, and process and system figures collected at scrape time.

With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set before the workers start, which ``serve``
does by itself) values live in per-process files that any worker sums when scraped; see
:mod:`library_api.observability.multiprocess`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client import disable_created_metrics as _disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.engine import Connection, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from library_api.db.reads import STATEMENT_OBSERVER
from library_api.events import DomainEvent
from library_api.observability import multiprocess

logger = logging.getLogger("library_api.metrics")

UNMATCHED = "unmatched"
"""The ``endpoint`` label of requests that match no route (a fixed value, so unknown paths add no series)."""

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_QUERY_TYPES = frozenset({"select", "insert", "update", "delete"})
_STARTED = "_library_query_started"
_no_created_series: Callable[[], None] = _disable_created_metrics


def multiprocess_active(directory: Path | None) -> bool:
    """Whether metric values are being written to files for a multi-process scrape.

    The client library decides at import time, from ``PROMETHEUS_MULTIPROC_DIR`` in the process environment;
    a directory configured only in a file therefore cannot switch it on for a process already running, and a
    single process is then counted in memory (which is correct for one process).
    """
    return directory is not None and bool(getattr(values.ValueClass, "_multiprocess", False))


class Metrics:
    """The metric objects of one application and the registry a scrape reads."""

    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir if multiprocess_active(multiprocess_dir) else None
        if multiprocess_dir is not None and self.multiprocess_dir is None:
            logger.warning(
                "PROMETHEUS_MULTIPROC_DIR is configured but was not in the environment when the process started; "
                "metrics of this process are kept in memory"
            )
        _no_created_series()  # no ``*_created`` series: they double the series count for nothing
        self.registry = CollectorRegistry(auto_describe=True)
        owned = None if self.multiprocess_dir is not None else self.registry

        self.http_requests = Counter(
            "http_requests", "HTTP requests answered", ["method", "endpoint", "status"], registry=owned
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time from the request's arrival to the end of its response",
            ["method", "endpoint"],
            buckets=HTTP_BUCKETS,
            registry=owned,
        )
        self.http_in_progress = Gauge(
            "http_requests_in_progress",
            "HTTP requests being served",
            ["method", "endpoint"],
            multiprocess_mode="livesum",
            registry=owned,
        )
        self.books_created = Counter("books_created", "Books added to the catalogue", registry=owned)
        self.users_registered = Counter("users_registered", "Accounts created by self-registration", registry=owned)
        self.bookings_created = Counter("bookings_created", "Bookings made", registry=owned)
        self.db_query_duration = Histogram(
            "db_query_duration_seconds",
            "Time of each SQL statement, by kind (select, insert, update, delete, other)",
            ["query_type"],
            buckets=DB_BUCKETS,
            registry=owned,
        )
        self.db_connections = Gauge(
            "db_connections",
            "Database connections checked out of the pools (primary and replica) right now",
            multiprocess_mode="livesum",
            registry=owned,
        )
        self.ws_connections = Gauge(
            "websocket_connections", "Open WebSocket connections", multiprocess_mode="livesum", registry=owned
        )
        self.ws_messages_sent = Counter("websocket_messages_sent", "WebSocket messages sent to clients", registry=owned)
        self.ws_messages_received = Counter(
            "websocket_messages_received", "WebSocket messages received from clients", registry=owned
        )
        self.ws_dropped = Counter(
            "websocket_drops",
            "WebSocket clients disconnected or messages dropped, by reason (e.g. slow_client, queue_full)",
            ["reason"],
            registry=owned,
        )
        self.ws_refusals = Counter(
            "websocket_refusals",
            "WebSocket connections refused by the abuse limits, by reason (e.g. handshake_rate, pending_auth)",
            ["reason"],
            registry=owned,
        )
        self.outbox_depth = Gauge(
            "live_event_outbox_depth",
            "Live events committed and not yet published to the broker (counted up to 100000; latest look)",
            multiprocess_mode="livemostrecent",
            registry=owned,
        )
        self.outbox_oldest_age = Gauge(
            "live_event_outbox_oldest_age_seconds",
            "How long the oldest live event not yet published has waited, in seconds (0 when none waits)",
            multiprocess_mode="livemostrecent",
            registry=owned,
        )
        self.tls_handshake_failures = Counter(
            "tls_handshake_failures",
            "TLS handshakes the server refused or that did not finish, by OpenSSL's reason",
            ["reason"],
            registry=owned,
        )
        self.cache_hits = Counter(
            "cache_hits", "Cached answers (catalogue, readers' booking pages) served", ["cache"], registry=owned
        )
        self.cache_misses = Counter(
            "cache_misses", "Cached answers that had to be read from the database", ["cache"], registry=owned
        )
        self.rate_limited = Counter(
            "rate_limit_rejections",
            "Requests refused with 429 by the rate limiter, by route template",
            ["endpoint"],
            registry=owned,
        )
        self.circuit_state = Gauge(
            "circuit_breaker_state",
            "State of the circuit breaker around a dependency: 0 closed, 1 open, 2 half-open (worst worker)",
            ["dependency"],
            multiprocess_mode="livemax",
            registry=owned,
        )
        self.health_ready = Gauge(
            "health_ready",
            "1 when the latest readiness check passed (ready or degraded), 0 when not ready",
            multiprocess_mode="livemostrecent",
            registry=owned,
        )
        self.build_info = Gauge(
            "library_api_build_info",
            "Always 1; the labels name the running version",
            ["version"],
            multiprocess_mode="livemax",
            registry=owned,
        )
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._duration_children: dict[tuple[str, str], Any] = {}
        self._progress_children: dict[tuple[str, str], Any] = {}
        self._statement_children: dict[str, Any] = {}

        if self.multiprocess_dir is not None:
            self.registry.register(multiprocess.LockedMultiProcessCollector(self.multiprocess_dir))
        self.registry.register(SystemCollector(self.multiprocess_dir))

    # ----- the request path: label children are cached so a request costs dictionary lookups, not locks -----

    def in_progress(self, method: str, endpoint: str) -> Any:
        """The in-progress gauge child for a method and route template."""
        key = (method, endpoint)
        child = self._progress_children.get(key)
        if child is None:
            child = self._progress_children[key] = self.http_in_progress.labels(method, endpoint)
        return child

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and record how long it took."""
        key = (method, endpoint, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.http_requests.labels(method, endpoint, str(status))
        counter.inc()
        duration_key = (method, endpoint)
        histogram = self._duration_children.get(duration_key)
        if histogram is None:
            histogram = self._duration_children[duration_key] = self.http_duration.labels(method, endpoint)
        histogram.observe(seconds)

    async def on_event(self, event: DomainEvent) -> None:
        """Count the business events (subscribed to the event bus: only committed changes are counted)."""
        if event.type == "book.created":
            self.books_created.inc()
        elif event.type == "booking.created":
            self.bookings_created.inc()

    # ----- exposition -----

    def expose(self, accept: str | None) -> tuple[bytes, str]:
        """The body and content type of a scrape, in the format the scraper asked for."""
        if self.multiprocess_dir is not None:
            multiprocess.collect_dead_workers(self.multiprocess_dir)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # ----- the database -----

    def instrument(self, *engines: AsyncEngine) -> None:
        """Time every statement and count checked-out connections of ``engines`` (undone by :meth:`release`)."""
        for engine in engines:
            sync_engine = engine.sync_engine
            event.listen(sync_engine, "before_cursor_execute", self._before_execute)
            event.listen(sync_engine, "after_cursor_execute", self._after_execute)
            event.listen(sync_engine, "handle_error", self._on_error)
            event.listen(sync_engine.pool, "checkout", self._on_checkout)
            event.listen(sync_engine.pool, "checkin", self._on_checkin)

    def release(self, *engines: AsyncEngine) -> None:
        """Remove the listeners :meth:`instrument` added (engines can outlive an application, as in tests)."""
        for engine in engines:
            sync_engine = engine.sync_engine
            targets: list[tuple[Any, str, Callable[..., None]]] = [
                (sync_engine, "before_cursor_execute", self._before_execute),
                (sync_engine, "after_cursor_execute", self._after_execute),
                (sync_engine, "handle_error", self._on_error),
                (sync_engine.pool, "checkout", self._on_checkout),
                (sync_engine.pool, "checkin", self._on_checkin),
            ]
            for target, name, listener in targets:
                if event.contains(target, name, listener):
                    event.remove(target, name, listener)

    def _before_execute(
        self, _conn: Connection, _cursor: Any, _statement: str, _params: Any, context: ExecutionContext, _many: bool
    ) -> None:
        setattr(context, _STARTED, time.perf_counter())

    def _after_execute(
        self, _conn: Connection, _cursor: Any, statement: str, _params: Any, context: ExecutionContext, _many: bool
    ) -> None:
        self._observe_query(statement, context)

    def _on_error(self, exception_context: Any) -> None:
        context = exception_context.execution_context
        if context is not None and exception_context.statement is not None:
            self._observe_query(exception_context.statement, context)

    def _observe_query(self, statement: str, context: ExecutionContext) -> None:
        started = getattr(context, _STARTED, None)
        if started is None:
            return
        delattr(context, _STARTED)
        self.db_query_duration.labels(query_type(statement)).observe(time.perf_counter() - started)

    def observe_statement(self, statement: str, seconds: float) -> None:
        """Time a statement that did not pass through SQLAlchemy's events (the driver-run hot reads)."""
        kind = query_type(statement)
        histogram = self._statement_children.get(kind)
        if histogram is None:
            histogram = self._statement_children[kind] = self.db_query_duration.labels(kind)
        histogram.observe(seconds)

    def _on_checkout(self, _dbapi_connection: Any, record: Any, *_args: Any) -> None:
        self.db_connections.inc()
        record.info[STATEMENT_OBSERVER] = self.observe_statement

    def _on_checkin(self, _dbapi_connection: Any, record: Any, *_args: Any) -> None:
        self.db_connections.dec()
        if record is not None:
            record.info.pop(STATEMENT_OBSERVER, None)


def query_type(statement: str) -> str:
    """``select``, ``insert``, ``update``, ``delete`` or ``other``: the first keyword of a statement."""
    head = statement.lstrip()[:6].lower()
    return head if head in _QUERY_TYPES else "other"


class SystemCollector(Collector):
    """CPU, memory and disk of the host, and the service's resident memory, read at each scrape.

    Nothing is stored between scrapes: the figures are current whichever worker answers. The service's memory
    is the sum over its live worker processes in multi-process mode.
    """

    def __init__(self, multiprocess_dir: Path | None) -> None:
        self._multiprocess_dir = multiprocess_dir
        psutil.cpu_percent(interval=None)  # the first reading only sets the baseline

    def collect(self) -> Iterable[Metric]:
        """Yield the current figures."""
        yield GaugeMetricFamily(
            "system_cpu_usage_percent",
            "CPU use of the host since the previous scrape of this process, in percent",
            value=psutil.cpu_percent(interval=None),
        )
        yield GaugeMetricFamily(
            "system_memory_usage_bytes", "Memory in use on the host", value=psutil.virtual_memory().used
        )
        disk = GaugeMetricFamily(
            "system_disk_usage_bytes", "Bytes used on each mounted file system", labels=["mountpoint"]
        )
        for mountpoint, used in _disk_usage():
            disk.add_metric([mountpoint], used)
        yield disk
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory of the service's processes (summed over live workers)",
            value=sum(_resident_memory(pid) for pid in self._processes()),
        )

    def _processes(self) -> Iterator[int]:
        yield os.getpid()
        if self._multiprocess_dir is not None:
            for pid in multiprocess.live_worker_pids(self._multiprocess_dir):
                if pid != os.getpid():
                    yield pid


def _disk_usage() -> Iterator[tuple[str, int]]:
    seen: set[str] = set()
    for partition in psutil.disk_partitions(all=False):
        if partition.mountpoint in seen:
            continue
        seen.add(partition.mountpoint)
        try:
            yield partition.mountpoint, psutil.disk_usage(partition.mountpoint).used
        except OSError:
            continue


def _resident_memory(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0
