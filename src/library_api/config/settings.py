"""The settings model: every key of the service's configuration, its default, and the checks one field makes alone.

Values come from five layers, highest precedence first (merged by :mod:`library_api.config.loading`):

1. command-line flags (passed as ``overrides``),
2. process environment variables,
3. the ``.env`` file,
4. an optional TOML or YAML configuration file (``--config`` or ``CONFIG_FILE``),
5. the defaults below.

The deploy environment beats files shipped with the release (the twelve-factor convention) and an explicit
flag beats everything. Keys keep the names of the seed's production ``.env`` (``DATABASE_URL``,
``SECRET_KEY``, ...). Nothing else in the package reads ``os.environ``: the loader is the single door.

Every problem is reported as one readable line naming the key, what is wrong and where the value came from;
:class:`~library_api.config.loading.ConfigError` carries the whole list so that start-up can print all of them
at once and exit non-zero before any port is opened. The checks that need several fields are
:mod:`library_api.config.checks`; which security mode is in force is :mod:`library_api.config.security_mode`.
:func:`public_view` shows the model with every secret masked (``check-config``, start-up logs).

The file is longer than most because :class:`Settings` is one cohesive class: every key is declared in one
place, so that a reader (and ``check-config``) sees the whole configuration surface at once, and a new key is
one added field.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from library_api.config.security_mode import SecurityDecision, decide_security_mode

DEFAULT_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""A policy under which the service's own pages (their script, styles and a same-host WebSocket) work and
nothing else loads; ``'self'`` covers ``ws://``/``wss://`` to the page's own host (CSP Level 3)."""

DEFAULT_SECRET_KEY = "development-only-insecure-secret-key-change-me"  # noqa: S105 - refused in production
"""The secret used when none is configured; accepted only in development."""

KNOWN_PLACEHOLDER_SECRETS = frozenset(
    {
        DEFAULT_SECRET_KEY,
        "your-256-bit-secret-change-this-in-production",
        "change-me",
        "changeme",
        "secret",
    }
)
"""Secrets copied from examples; production refuses every one of them."""

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Request methods the service answers; anything else is grouped as ``OTHER`` in metrics."""

OVERRIDES_ENV = "LIBRARY_API_OVERRIDES"
"""Environment key through which a parent process hands its command-line overrides to worker processes."""


class Environment(StrEnum):
    """Where the service runs; production turns on the strict checks."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"


def _split_list(value: Any) -> Any:
    """Accept a JSON array or a comma-separated string for list settings, as the seed's ``.env`` uses both."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def canonical_origin(text: str) -> str | None:
    """A web origin as ``scheme://host[:port]``, lower case, the scheme's default port left out; None if not one.

    One spelling for every origin compared (``WS_ALLOWED_ORIGINS`` entries and the ``Origin`` header a browser
    sends), so that ``https://Library.example.com:443`` and ``https://library.example.com`` are the same origin.
    """
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        return None
    host = f"[{host}]" if ":" in host else host
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" if port in (None, default) else f"{parts.scheme}://{host}:{port}"


class Settings(BaseSettings):
    """Every setting of the service, with defaults that run the embedded development setup.

    Instances are immutable; build them with :func:`load_settings` (which merges the layers and reports
    problems) or directly with keyword arguments in tests.
    """

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # ----- basics -----
    project_name: str = "Library API"
    version: str = "1.0.0"
    api_v1_str: str = "/api/v1"
    environment: Environment = Environment.DEVELOPMENT
    debug: bool = False
    docs_enabled: bool = True

    # ----- database -----
    database_url: str = "sqlite+aiosqlite:///var/library.db"
    database_replica_url: str | None = None
    database_echo: bool = False
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    # No overflow by default: under sustained load overflow connections are opened and closed again for every
    # burst (a TCP, TLS and authentication round each), which costs more than waiting for a pooled connection.
    database_max_overflow: int = Field(default=0, ge=0, le=1000)
    database_pool_timeout: float = Field(default=5.0, gt=0, le=300)
    database_statement_timeout_ms: int = Field(default=15_000, ge=0)
    auto_migrate: bool | None = None
    seed_sample_on_empty: bool | None = None
    database_retry_attempts: int = Field(default=3, ge=1, le=20)
    database_retry_base_delay: float = Field(default=0.05, gt=0, le=10)
    database_retry_max_delay: float = Field(default=2.0, gt=0, le=60)

    # ----- security -----
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    access_token_expire_minutes: int = Field(default=30, ge=1, le=24 * 60)
    refresh_token_expire_days: int = Field(default=30, ge=1, le=365)
    jwt_issuer: str = "library-api"
    jwt_audience: str = "library-api"
    principal_cache_ttl: float = Field(default=1.0, ge=0, le=60)
    role_permissions: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    password_min_length: int = Field(default=8, ge=8, le=128)
    password_hash_time_cost: int = Field(default=3, ge=1, le=20)
    password_hash_memory_kib: int = Field(default=65_536, ge=1024, le=4 * 1024 * 1024)
    password_hash_parallelism: int = Field(default=4, ge=1, le=64)
    password_hash_concurrency: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Password hashes or checks running at once per process (each takes "
        "PASSWORD_HASH_MEMORY_KIB and a core for its duration); more wait their turn.",
    )
    password_hash_queue_timeout: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="Seconds a password check waits for a hashing slot before it is answered 503 "
        "password-check-busy with Retry-After.",
    )
    password_reset_expire_minutes: int = Field(
        default=30,
        ge=1,
        le=24 * 60,
        description="Minutes a password-reset link stays usable (once, and only the account's newest).",
    )

    # ----- HTTP -----
    max_request_body_size: int = Field(default=1024 * 1024, ge=1024)
    max_query_parameters: int = Field(default=100, ge=20, le=10_000)
    """Parameters an API query string may hold (the routes take at most 20); more is a 414 problem."""
    http_header_timeout: float = Field(default=10.0, gt=0, le=300)
    """Seconds a client has to send a request's line and headers (slowloris guard, Uvicorn)."""
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """Event loop of Uvicorn and Gunicorn workers: ``auto`` (uvloop where installed, as Uvicorn does), or either."""
    backend_cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Peers believed for ``X-Forwarded-For``, ``X-Forwarded-Proto`` and ``X-Request-ID``; nothing more."""
    forwarded_cert_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Peers believed for a forwarded client certificate (``ssl-client-cert``), verified against TLS_CA_FILE."""
    content_security_policy: str = DEFAULT_CONTENT_SECURITY_POLICY
    hsts_max_age: int = Field(default=63_072_000, ge=0)
    gzip_minimum_size: int = Field(default=1000, ge=0)

    # ----- rate limiting -----
    rate_limit_enabled: bool | None = None
    rate_limit_storage: Literal["memory", "redis"] | None = None
    rate_limit_default: str = "600/minute"
    rate_limit_routes: dict[str, str] = Field(default_factory=dict)
    rate_limit_login_account: str = Field(
        default="10/15 minutes",
        description="Failed password checks for one account from all addresses together; once spent, only "
        "addresses that have not failed for it (or signed in to it recently) may still try.",
    )
    rate_limit_login_account_address: str = Field(
        default="5/15 minutes",
        description="Failed password checks for one account from one client address (login and every route "
        "that checks a password); once spent, that address gets 429 for that account.",
    )
    rate_limit_login_known_address_days: int = Field(
        default=30,
        ge=0,
        le=365,
        description="Days after a successful sign-in during which its address keeps its own attempts at an "
        "account under attack (0: off).",
    )
    rate_limit_password_reset_account: str = Field(
        default="3/hour;10/day",
        description="Password-reset requests for one e-mail address from all client addresses together "
        "(counted alike whether or not an account has that address); once spent, 429.",
    )

    # ----- cache / broker -----
    redis_url: SecretStr | None = None
    redis_socket_timeout: float = Field(default=0.5, gt=0, le=30)
    redis_breaker_failures: int = Field(default=3, ge=1, le=100)
    redis_breaker_reset_seconds: float = Field(default=5.0, gt=0, le=600)
    cache_enabled: bool = True
    cache_type: Literal["memory", "redis"] | None = None
    cache_default_timeout: int = Field(default=300, ge=1, le=86_400)
    cache_key_prefix: str = Field(default="library_", max_length=64)
    cache_max_entries: int = Field(default=10_000, ge=10, le=10_000_000)

    # ----- observability -----
    metrics_enabled: bool = True
    prometheus_multiproc_dir: Path | None = None
    monitoring_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"]
    )
    access_log: bool = True
    health_check_timeout: float = Field(default=2.0, gt=0, le=60)
    health_disk_warning_percent: float = Field(default=90.0, gt=0, le=100)
    health_disk_critical_percent: float = Field(default=95.0, gt=0, le=100)
    health_memory_warning_percent: float = Field(default=85.0, gt=0, le=100)
    health_memory_critical_percent: float = Field(default=95.0, gt=0, le=100)
    sentry_dsn: SecretStr | None = None
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0, le=1)

    # ----- logging -----
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] | None = None

    # ----- uploads -----
    upload_dir: Path = Path("var/uploads")
    max_upload_size: int = Field(default=5 * 1024 * 1024, ge=1)
    allowed_file_types: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png"])

    # ----- domain -----
    booking_max_days: int = Field(default=30, ge=1, le=3650)
    idempotency_key_ttl_hours: int = Field(default=24, ge=1, le=24 * 30)
    booking_start_grace_seconds: int = Field(default=300, ge=0, le=86_400)
    list_total_cap: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Lists count their matches up to this many (then `total_relation` is `gte`): a page's cost "
        "stays bounded whatever the size of the table.",
    )
    max_list_offset: int = Field(
        default=10_000,
        ge=0,
        le=1_000_000,
        description="The deepest `offset` a list accepts; deeper pages are reached with the cursor.",
    )

    # ----- real time -----
    broadcast_interval: float = Field(default=10.0, ge=0, le=86_400)
    ws_allow_anonymous: bool = False
    ws_allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, max_length=100)
    """Browser origins besides the service's own whose pages may open ``/ws`` (``https://host[:port]``)."""
    ws_auth_timeout: float = Field(default=10.0, gt=0, le=300)
    ws_send_queue_size: int = Field(default=256, ge=1, le=100_000)
    ws_history_size: int = Field(default=1000, ge=0, le=1_000_000)
    live_outbox_poll_interval: float = Field(default=1.0, gt=0, le=60)
    """Seconds between two looks at the live event outbox by each worker's relay when nothing woke it: how soon
    events a dead worker left behind are published by another (a worker's own commits wake its relay at once)."""
    ws_max_subscriptions: int = Field(default=100, ge=1, le=10_000)
    ws_per_message_deflate: bool = False
    ws_max_size: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024 * 1024)
    """Largest message a client may send (bytes, after decompression); the server refuses a larger frame with
    close 1009 before buffering it. Client commands are small JSON objects, so 64 KiB leaves ample room."""
    ws_preauth_max_size: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    """Largest first message of a connection not yet authenticated (close 1009); the effective limit is never
    above ``WS_MAX_SIZE``. 16 KiB holds an ``auth`` message with the longest token accepted (8,192 characters)."""
    ws_handshake_rate: str = "30/minute"
    """WebSocket handshakes per client address (``limits`` notation), counted by the rate limiter whenever rate
    limiting is on; the next one is refused with HTTP 429 before the upgrade."""
    ws_max_pending_per_address: int = Field(default=8, ge=1, le=10_000)
    """Connections per client address and worker that are open but not yet authenticated (HTTP 429 beyond)."""
    ws_max_connections_per_principal: int = Field(default=20, ge=1, le=1_000_000)
    """Open connections (distinct client ids) per caller and worker; one more is closed with 4429."""
    ws_ping_interval: float = Field(default=20.0, ge=0, le=3600)
    ws_ping_timeout: float = Field(default=20.0, ge=0, le=3600)
    ws_credential_check_interval: float = Field(default=0.5, gt=0, le=60)
    """Seconds between two checks of every open connection's credential against the account and token state
    (cached for ``PRINCIPAL_CACHE_TTL``); a revocation ends a live session within the sum of the two."""
    ws_auth_renew_notice: float = Field(default=60.0, ge=0, le=3600)
    """Seconds before an access token expires at which its connection is sent ``auth_expiring``."""
    ws_auth_grace: float = Field(default=5.0, ge=0, le=5)
    """Seconds past ``exp`` a connection may stay without renewing before it is closed with 4401 (at most the
    5 s of clock skew every access token is verified with)."""
    realtime_redis_prefix: str = Field(default="library-api:realtime", min_length=1, max_length=100)

    # ----- e-mail -----
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_ca_file: Path | None = None  # CA certificates (PEM) the SMTP server's must chain to; else the system's
    smtp_timeout: float = Field(default=10.0, gt=0, le=300)
    email_from: str | None = None
    email_from_name: str = "Library System"
    email_max_attempts: int = Field(default=6, ge=1, le=100)
    email_max_age_hours: float = Field(default=48.0, gt=0, le=24 * 30)
    email_poll_interval: float = Field(default=30.0, gt=0, le=3600)
    email_retry_delay: float = Field(default=30.0, gt=0, le=3600)
    booking_reminder_hours: float = Field(default=24.0, ge=0, le=24 * 30)
    password_reset_url: str | None = Field(
        default=None,
        description="The page of the front end that takes a password-reset link: the mail links to it with "
        "'#token=...' appended. Password reset by e-mail is off until it and SMTP_HOST are set.",
    )

    # ----- server -----
    shutdown_timeout: float = Field(default=1800.0, ge=0, le=86_400)
    shutdown_progress_interval: float = Field(default=10.0, gt=0, le=3600)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    reload: bool = False

    # ----- security modes, TLS and servers (docs/security.md, docs/servers.md) -----
    security_mode: Literal["auto", "http", "https", "mtls", "token"] = "auto"
    server: Literal["uvicorn", "hypercorn", "gunicorn"] = "uvicorn"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_crl_file: Path | None = None
    certificate_role_source: Literal["organization", "uri"] = "organization"
    certificate_role_uri_prefix: str = Field(default="urn:library-api:role:", min_length=1, max_length=200)
    allow_http_behind_proxy: bool = False

    @field_validator(
        "backend_cors_origins",
        "allowed_file_types",
        "allowed_hosts",
        "trusted_proxies",
        "forwarded_cert_proxies",
        "monitoring_allowed_networks",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_file_types")
    @classmethod
    def _extensions(cls, value: list[str]) -> list[str]:
        return [item if item.startswith(".") else f".{item}" for item in (v.lower() for v in value)]

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        """Any case, as Uvicorn and the seed's ``.env`` spell it (``info``), and ``warn`` for ``warning``."""
        if isinstance(value, str):
            upper = value.strip().upper()
            return "WARNING" if upper == "WARN" else upper
        return value

    @field_validator("ws_allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        origins = _split_list(value)
        if not isinstance(origins, list):
            return origins
        canonical = [canonical_origin(str(origin)) for origin in origins]
        wrong = [str(origin) for origin, same in zip(origins, canonical, strict=True) if same is None]
        if wrong:
            raise ValueError(f"{wrong[0]!r} is not an origin such as https://library.example.com or http://host:8080")
        return canonical

    @field_validator("role_permissions", "rate_limit_routes", mode="before")
    @classmethod
    def _json_tables(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @property
    def is_production(self) -> bool:
        """Whether the strict production checks apply."""
        return self.environment is Environment.PRODUCTION

    @property
    def security(self) -> SecurityDecision:
        """The security mode in force and why (``SECURITY_MODE=auto`` decides from the TLS files configured)."""
        return decide_security_mode(self)

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")

    @property
    def effective_cache_type(self) -> Literal["memory", "redis"] | None:
        """Where catalogue answers are cached, or ``None`` when caching is off.

        Redis when ``REDIS_URL`` is set (shared by every worker, so invalidation reaches all of them), the
        process's memory otherwise. With several workers and no Redis the cache is off unless chosen
        explicitly: a worker cannot tell the others that an answer changed.
        """
        if not self.cache_enabled:
            return None
        if self.cache_type is not None:
            return self.cache_type
        if self.redis_url is not None:
            return "redis"
        return "memory" if self.workers == 1 else None

    @property
    def effective_rate_limit_enabled(self) -> bool:
        """Rate limits are on in production unless turned off, and off in development unless turned on.

        Development runs (load tests, scripts, many accounts from one machine) should not be throttled by
        surprise; a production deployment is protected without having to ask.
        """
        return self.rate_limit_enabled if self.rate_limit_enabled is not None else self.is_production

    @property
    def effective_rate_limit_storage(self) -> Literal["memory", "redis"]:
        """Redis (exact across workers) when ``REDIS_URL`` is set, per-process counters otherwise."""
        if self.rate_limit_storage is not None:
            return self.rate_limit_storage
        return "redis" if self.redis_url is not None else "memory"

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        """JSON in production, readable lines in development, unless set explicitly."""
        if self.log_format is not None:
            return self.log_format
        return "json" if self.is_production else "console"

    @property
    def email_enabled(self) -> bool:
        """Whether e-mail notifications are on: only when an SMTP server is configured."""
        return bool(self.smtp_host)

    @property
    def password_reset_enabled(self) -> bool:
        """Whether forgotten passwords can be reset by e-mail: an SMTP server and the link's page are known."""
        return self.email_enabled and self.password_reset_url is not None

    @property
    def should_auto_migrate(self) -> bool:
        """The embedded default migrates itself; servers with a real database run ``migrate`` explicitly."""
        return self.auto_migrate if self.auto_migrate is not None else self.is_sqlite

    @property
    def should_seed_on_empty(self) -> bool:
        """Load the sample catalogue into an empty embedded database so a newcomer sees books at once."""
        if self.seed_sample_on_empty is not None:
            return self.seed_sample_on_empty
        return self.is_sqlite and not self.is_production

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only keyword arguments count: :func:`load_settings` merges the layers itself to know each source."""
        return (init_settings,)


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in get_args(annotation)


SECRET_FIELDS = frozenset(name for name, field in Settings.model_fields.items() if _is_secret(field.annotation))
"""Settings whose values are masked wherever configuration is shown (every ``SecretStr`` field)."""


def _env_name(field: str) -> str:
    return field.upper()


def public_view(settings: Settings) -> dict[str, Any]:
    """The effective configuration with every secret masked, for ``check-config`` and logs."""
    view: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name in SECRET_FIELDS:
            view[_env_name(name)] = None if value is None else "********"
        elif name.endswith("_url") and isinstance(value, str):
            view[_env_name(name)] = mask_url(value)
        else:
            view[_env_name(name)] = value.value if isinstance(value, StrEnum) else value
    return view


def mask_url(url: str) -> str:
    """Hide the password part of a connection URL (``scheme://user:***@host/db``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
