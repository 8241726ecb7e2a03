"""The application factory: the one place where every part of the service meets.

:func:`create_app` builds a complete, independent application from validated :class:`Settings`: database,
security, services, routers, middleware and error handling, all kept on one :class:`AppContext`. The lifespan
opens what needs opening (and, for the embedded database, migrates and seeds it) and closes everything on the
way out. Nothing is global, so tests build as many apps as they like, side by side.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from library_api.auth.resets import PasswordResets
from library_api.auth.router import LINKS as AUTH_LINKS
from library_api.auth.router import router as auth_router
from library_api.auth.service import AuthService, revoke_credentials
from library_api.bookings.page_cache import BookingPages, pages_enabled
from library_api.bookings.router import LINKS as BOOKING_LINKS
from library_api.bookings.router import router as bookings_router
from library_api.bookings.service import BookingService
from library_api.books.catalogue_cache import CatalogueCache
from library_api.books.covers import CoverStore
from library_api.books.router import LINKS as BOOK_LINKS
from library_api.books.router import router as books_router
from library_api.books.seed import catalogue_is_empty, load_catalogue, seed_catalogue
from library_api.books.service import BookService
from library_api.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from library_api.config import Settings
from library_api.db import migrate
from library_api.db.engine import Database, attach_replica, create_database
from library_api.dependencies.context import AppContext
from library_api.events import EventBus
from library_api.http.fast_dispatch import install_fast_path
from library_api.http.links import add_links
from library_api.http.networks import Networks
from library_api.http.query import single_valued_query
from library_api.http.stack import install_middleware
from library_api.idempotency.store import IdempotencyStore
from library_api.lifecycle.shutdown import ShutdownCoordinator
from library_api.notifications.service import Notifier
from library_api.observability import multiprocess
from library_api.observability.health import HealthMonitor
from library_api.observability.metrics import Metrics
from library_api.observability.router import router as health_router
from library_api.observability.scrape import router as metrics_router
from library_api.observability.sentry import init_sentry
from library_api.problems import install_problem_handlers
from library_api.problems.responses import add_problem_responses, use_problem_media_type
from library_api.realtime.admission import Admission
from library_api.realtime.broker import Broker, MemoryBroker
from library_api.realtime.credentials import CredentialGuard
from library_api.realtime.hub import Hub
from library_api.realtime.relay import Backlog, Relay
from library_api.realtime.router import api_router as realtime_router
from library_api.realtime.router import router as websocket_router
from library_api.realtime.server_send import ServerSendMiddleware
from library_api.resilience.breaker import CircuitBreaker, CircuitState
from library_api.resilience.database import install_database_unavailable_handler
from library_api.resilience.rate_limits import RateLimiter, RateLimitPolicies, builtin_route_limits
from library_api.resilience.redis import GuardedRedis
from library_api.resilience.retry import Backoff
from library_api.resilience.schema import SchemaWatch
from library_api.security.authentication import Authenticator
from library_api.security.certificates import CertificateReader, issuer_names
from library_api.security.forwarded_certificates import ForwardedCertificateVerifier
from library_api.security.password_checks import PasswordChecks
from library_api.security.passwords import PasswordService
from library_api.security.permissions import PermissionPolicy
from library_api.security.tokens import TokenService
from library_api.tokens.router import router as tokens_router
from library_api.tokens.service import ApiTokenService
from library_api.users.accounts import AccountStateCache
from library_api.users.router import LINKS as USER_LINKS
from library_api.users.router import router as users_router
from library_api.users.service import UserService
from library_api.web.router import router as web_router

logger = logging.getLogger("library_api.app")

DESCRIPTION = """
The Library API: a catalogue of books, bookings of copies for a period, and accounts.

Errors are `application/problem+json` (RFC 9457) with a stable `type`. Authenticate with
`Authorization: Bearer <access token>` from `POST /api/v1/auth/login`.
"""


class LibraryAPI(FastAPI):
    """FastAPI with the service's OpenAPI conventions (problem responses documented as such)."""

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document, built once, with error responses as ``application/problem+json``.

        Every API operation also lists 414 (more query parameters than ``MAX_QUERY_PARAMETERS``), 503 (database
        unreachable) and, when rate limiting is on, 429; every operation with a request body lists 400 (a body
        that is not even text, such as invalid UTF-8), and every operation that accepts a credential lists 401 (one
        that is invalid, expired or revoked). Links declared by the routers say which operation's answer
        feeds which operation's parameters.
        """
        if self.openapi_schema is None:
            schema = get_openapi(
                title=self.title, version=self.version, description=self.description, routes=self.routes
            )
            settings: Settings = self.state.context.settings
            statuses = (414, 429, 503) if settings.effective_rate_limit_enabled else (414, 503)
            add_problem_responses(schema, settings.api_v1_str, statuses)
            add_links(schema, settings.api_v1_str, (*AUTH_LINKS, *USER_LINKS, *BOOK_LINKS, *BOOKING_LINKS))
            self.openapi_schema = use_problem_media_type(schema)
        return self.openapi_schema


def _redis(settings: Settings, metrics: Metrics) -> GuardedRedis | None:
    """The application's Redis client behind its circuit breaker, when ``REDIS_URL`` is set."""
    if settings.redis_url is None:
        return None
    state = metrics.circuit_state.labels("redis")
    state.set(CircuitState.CLOSED)
    breaker = CircuitBreaker(
        "Redis",
        failure_threshold=settings.redis_breaker_failures,
        reset_timeout=settings.redis_breaker_reset_seconds,
        on_change=state.set,
    )
    return GuardedRedis(
        settings.redis_url.get_secret_value(), socket_timeout=settings.redis_socket_timeout, breaker=breaker
    )


def build_broker(settings: Settings) -> Broker:
    """Redis Streams when ``REDIS_URL`` is set (several workers or hosts), the in-process broker otherwise."""
    if settings.redis_url is not None:
        from library_api.realtime.redis_broker import RedisBroker  # noqa: PLC0415 - redis-py takes 0.4 s to import

        return RedisBroker(
            settings.redis_url.get_secret_value(), settings.realtime_redis_prefix, settings.ws_history_size
        )
    return MemoryBroker(settings.ws_history_size)


def certificate_reader(settings: Settings) -> CertificateReader:
    """How client certificates name roles, and which issuers may sign them (the configured CA file's)."""
    issuers = issuer_names(settings.tls_ca_file) if settings.tls_ca_file is not None else None
    return CertificateReader(settings.certificate_role_source, settings.certificate_role_uri_prefix, issuers)


def revocation_check(settings: Settings) -> Callable[[str], str | None] | None:
    """With a CRL configured, what ends a live certificate session once its certificate is revoked (or invalid)."""
    if settings.tls_ca_file is None or settings.tls_crl_file is None:
        return None
    return ForwardedCertificateVerifier(settings.tls_ca_file, settings.tls_crl_file).problem


def build_context(settings: Settings, database: Database) -> AppContext:
    """Wire every service of one application from its settings and database."""
    events = EventBus()
    metrics = Metrics(multiprocess_dir=settings.prometheus_multiproc_dir)
    metrics.build_info.labels(settings.version).set(1)
    redis = _redis(settings, metrics)
    backoff = Backoff(settings.database_retry_base_delay, settings.database_retry_max_delay)
    policy = PermissionPolicy.from_overrides(settings.role_permissions)
    passwords = PasswordService(
        PasswordHasher(
            time_cost=settings.password_hash_time_cost,
            memory_cost=settings.password_hash_memory_kib,
            parallelism=settings.password_hash_parallelism,
        ),
        concurrency=settings.password_hash_concurrency,
        queue_timeout=settings.password_hash_queue_timeout,
    )
    rate_limiter = RateLimiter(
        redis=redis if settings.effective_rate_limit_storage == "redis" else None,
        key_prefix=settings.cache_key_prefix,
    )
    password_checks = PasswordChecks(
        passwords,
        rate_limiter,
        enabled=settings.effective_rate_limit_enabled,
        per_account_address=settings.rate_limit_login_account_address,
        per_account=settings.rate_limit_login_account,
        known_address_days=settings.rate_limit_login_known_address_days,
    )
    tokens = TokenService(settings)
    accounts = AccountStateCache(database.reader, settings.principal_cache_ttl)
    api_tokens = ApiTokenService(policy, database.reader, settings.principal_cache_ttl)
    users = UserService(passwords, password_checks, accounts, settings.password_min_length, revoke_credentials)
    books = BookService(events, CoverStore(settings.upload_dir), settings.api_v1_str)
    cache_type = settings.effective_cache_type
    backend: CacheBackend = (
        RedisBackend(redis, settings.cache_key_prefix)
        if redis is not None and (cache_type or "redis") == "redis"
        else MemoryBackend(settings.cache_max_entries)
    )
    catalogue = CatalogueCache(
        backend=backend,
        enabled=cache_type is not None,
        ttl=settings.cache_default_timeout,
        database=database,
        books=books,
        metrics=metrics,
        retry_attempts=settings.database_retry_attempts,
        backoff=backoff,
    )
    booking_pages = BookingPages(
        backend,
        enabled=pages_enabled(cache_type, backend, settings.workers),
        ttl=settings.cache_default_timeout,
        metrics=metrics,
    )
    # The caches hear of a change before anyone else does, so a client told of it reads the new state.
    events.subscribe(catalogue.on_event)
    events.subscribe(booking_pages.on_event)
    events.subscribe(metrics.on_event)
    shutdown = ShutdownCoordinator(settings.shutdown_timeout, settings.shutdown_progress_interval)
    hub = Hub(settings, build_broker(settings), shutdown)
    shutdown.add_drainer(hub)

    def observe_backlog(backlog: Backlog) -> None:
        metrics.outbox_depth.set(backlog.depth)
        metrics.outbox_oldest_age.set(backlog.oldest_age)

    relay = Relay(database, hub.publish, poll_interval=settings.live_outbox_poll_interval, on_backlog=observe_backlog)
    notifier = Notifier(settings, database)
    events.subscribe(notifier.on_domain_event)
    # Last: the relay holds the request until its event is published (bounded), after every other handler ran.
    events.subscribe(relay.on_domain_event)
    rate_limiter = RateLimiter(
        redis=redis if settings.effective_rate_limit_storage == "redis" else None,
        key_prefix=settings.cache_key_prefix,
    )
    refusals = metrics.ws_refusals
    authenticator = Authenticator(
        policy,
        tokens,
        accounts,
        api_tokens,
        certificates=certificate_reader(settings),
        anonymous_allowed=not settings.security.requires_credentials,
    )
    credentials = CredentialGuard(
        hub,
        authenticator,
        interval=settings.ws_credential_check_interval,
        renew_notice=settings.ws_auth_renew_notice,
        grace=settings.ws_auth_grace,
        certificate_check=revocation_check(settings),
    )
    return AppContext(
        settings=settings,
        database=database,
        events=events,
        policy=policy,
        passwords=passwords,
        password_checks=password_checks,
        tokens=tokens,
        accounts=accounts,
        api_tokens=api_tokens,
        authenticator=authenticator,
        users=users,
        auth=AuthService(
            users, passwords, password_checks, tokens, accounts, timedelta(days=settings.refresh_token_expire_days)
        ),
        books=books,
        bookings=BookingService(
            events,
            max_length=timedelta(days=settings.booking_max_days),
            start_grace=timedelta(seconds=settings.booking_start_grace_seconds),
            idempotency=IdempotencyStore(timedelta(hours=settings.idempotency_key_ttl_hours)),
            pages=booking_pages,
        ),
        shutdown=shutdown,
        metrics=metrics,
        redis=redis,
        catalogue=catalogue,
        rate_limiter=rate_limiter,
        rate_limit_policies=RateLimitPolicies(
            settings.rate_limit_default, settings.rate_limit_routes, builtin_route_limits(settings.api_v1_str)
        ),
        monitoring_networks=Networks(settings.monitoring_allowed_networks),
        health=HealthMonitor(
            settings, database, redis, shutdown, backoff, metrics.health_ready, schema=SchemaWatch(database.engine)
        ),
        hub=hub,
        relay=relay,
        admission=Admission(settings, rate_limiter, lambda reason: refusals.labels(reason.value).inc()),
        notifier=notifier,
        credentials=credentials,
        password_resets=PasswordResets(settings, database, users, passwords, rate_limiter, notifier),
    )


async def prepare_embedded_database(context: AppContext) -> None:
    """Migrate the database and, when configured and the catalogue is empty, load the sample catalogue."""
    settings = context.settings
    async with migrate.exclusive_transaction(context.database.engine) as connection:
        await connection.run_sync(migrate.upgrade_on)
        if settings.should_seed_on_empty and await catalogue_is_empty(connection):
            added = await seed_catalogue(connection, load_catalogue())
            logger.info("loaded the sample catalogue into the empty database: %d books", added)


async def start_background_work(context: AppContext) -> None:
    """Start the worker's background tasks, each after what it depends on (the hub before the relay feeding it)."""
    await context.health.begin_startup()
    await context.hub.start()
    await context.relay.start()
    context.credentials.start()
    await context.notifier.start()
    context.password_resets.start()


async def stop_background_work(context: AppContext) -> None:
    """Stop the background tasks: the relay before the hub, so nothing is published into a stopped hub."""
    await context.credentials.stop()
    await context.relay.stop()
    await context.hub.stop()
    await context.password_resets.stop()
    await context.notifier.stop()
    await context.health.stop()


def create_app(settings: Settings, *, database: Database | None = None) -> FastAPI:
    """Build the application. ``database`` lets a caller (tests) supply one it owns and will close itself."""
    database = database or create_database(settings)
    attach_replica(database, settings)
    context = build_context(settings, database)
    init_sentry(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.should_auto_migrate:
            await prepare_embedded_database(context)
        if settings.workers > 1 and settings.redis_url is None:
            logger.warning(
                "%d workers without REDIS_URL: each worker's WebSocket clients see only the events of that worker",
                settings.workers,
            )
        if settings.metrics_enabled:
            context.metrics.instrument(*database.engines)
        await start_background_work(context)
        # Everything built so far (modules, routes, compiled schemas) lives as long as the process; moving it out
        # of the collector's generations spares every later full collection from walking it again.
        gc.freeze()
        try:
            yield
        finally:
            await stop_background_work(context)
            context.metrics.release(*database.engines)
            if context.redis is not None:
                await context.redis.close()
            await database.dispose()
            if context.metrics.multiprocess_dir is not None:
                multiprocess.mark_process_dead_gauges(context.metrics.multiprocess_dir)

    app = LibraryAPI(
        # FastAPI's native OpenTelemetry hook looks up the global providers on every request; the service has
        # its own metrics and tracing (Prometheus, Sentry), so the hook stays off and costs nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title=settings.project_name,
        version=settings.version,
        description=DESCRIPTION,
        debug=False,
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    app.state.context = context
    install_problem_handlers(app)
    install_database_unavailable_handler(app, context.health.schema)

    async def current_schema() -> None:
        """API requests get a 503 ``schema-behind`` problem, not a 500, while the schema is behind the code."""
        await context.health.schema.require_current()

    api_dependencies = [Depends(single_valued_query), Depends(current_schema)]
    for router in (bookings_router, auth_router, users_router, books_router, tokens_router, realtime_router):
        app.include_router(router, prefix=settings.api_v1_str, dependencies=api_dependencies)
    app.include_router(health_router)
    if settings.metrics_enabled:
        app.include_router(metrics_router)
    app.include_router(websocket_router)
    app.include_router(web_router)
    install_fast_path(app.router.routes)

    app.add_middleware(ServerSendMiddleware)  # added first: the innermost layer (see its module)
    install_middleware(app, context)
    return app
