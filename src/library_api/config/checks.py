"""Cross-field checks of the settings: what no single field can decide alone, one readable line per problem.

:func:`validate_settings` runs after every field has been parsed (see :mod:`library_api.config.loading`); it
covers production hardening, the role table, networks, rate limits, dependencies, real time, e-mail, and the
security mode's prerequisites together with the TLS files themselves (:mod:`library_api.config.tls_files`).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from limits import parse_many

from library_api.config.security_mode import decide_security_mode
from library_api.config.settings import HTTP_METHODS, KNOWN_PLACEHOLDER_SECRETS, Environment, Settings


def validate_settings(settings: Settings) -> list[str]:
    """Semantic checks that no single field can make on its own; one readable line per problem."""
    problems: list[str] = []
    secret = settings.secret_key.get_secret_value()
    if settings.is_production:
        if secret in KNOWN_PLACEHOLDER_SECRETS:
            problems.append(
                "SECRET_KEY: must be set to a unique secret in production (the default or an example is in use)"
            )
        elif len(secret) < 32:
            problems.append("SECRET_KEY: must be at least 32 characters in production")
        if settings.debug:
            problems.append("DEBUG: must be off in production")
        if settings.password_hash_memory_kib < 19_456 or settings.password_hash_time_cost < 2:
            problems.append(
                "PASSWORD_HASH_MEMORY_KIB/PASSWORD_HASH_TIME_COST: production needs at least 19456 KiB and 2 "
                "passes (the OWASP minimum for argon2id)"
            )
        if "*" in settings.allowed_hosts:
            problems.append(
                "ALLOWED_HOSTS: production needs the host names clients use (e.g. ALLOWED_HOSTS=library.example.com); "
                "'*' answers any Host header and reflects it into redirects"
            )
    if not settings.database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        problems.append(
            "DATABASE_URL: must start with sqlite+aiosqlite:// or postgresql+asyncpg:// "
            f"(got a URL starting {settings.database_url.split('://')[0]!r})"
        )
    if not settings.api_v1_str.startswith("/") or settings.api_v1_str.endswith("/"):
        problems.append(f"API_V1_STR: must start with '/' and not end with one (got {settings.api_v1_str!r})")
    if not {".jpg", ".jpeg", ".png"} & set(settings.allowed_file_types):
        problems.append("ALLOWED_FILE_TYPES: covers need at least one of .jpg, .jpeg, .png")
    problems.extend(_role_table_problems(settings.role_permissions))
    problems.extend(_hardening_problems(settings))
    problems.extend(_realtime_problems(settings))
    problems.extend(_email_problems(settings))
    problems.extend(_password_reset_problems(settings))
    problems.extend(security_problems(settings))
    return problems


def _realtime_problems(settings: Settings) -> list[str]:
    """Checks of the WebSocket settings that depend on the environment or on each other."""
    problems = []
    if settings.is_production and settings.ws_allow_anonymous:
        problems.append("WS_ALLOW_ANONYMOUS: anonymous WebSocket clients are a development setting; turn it off")
    if any(char.isspace() for char in settings.realtime_redis_prefix):
        problems.append(f"REALTIME_REDIS_PREFIX: must not contain spaces (got {settings.realtime_redis_prefix!r})")
    if not _valid_rate_limit(settings.ws_handshake_rate):
        problems.append(
            f"WS_HANDSHAKE_RATE: {settings.ws_handshake_rate!r} is not a rate limit such as '30/minute' or "
            "'5/second;100/hour'"
        )
    return problems


def _email_problems(settings: Settings) -> list[str]:
    """E-mail is off without SMTP_HOST; with it, the sender address must be usable."""
    if not settings.email_enabled:
        return []
    problems = []
    address = settings.email_from or ""
    local, at, domain = address.partition("@")
    if not (local and at and "." in domain) or any(char.isspace() or char in "<>," for char in address):
        problems.append(f"EMAIL_FROM: SMTP_HOST is set, so a sender address is needed (got {address!r})")
    if (settings.smtp_user is None) != (settings.smtp_password is None):
        problems.append("SMTP_USER/SMTP_PASSWORD: set both to log in to the SMTP server, or neither")
    if any(char in settings.email_from_name for char in "\r\n"):
        problems.append("EMAIL_FROM_NAME: must be a single line")
    if settings.smtp_ca_file is not None:
        problems.extend(_ca_bundle_problems("SMTP_CA_FILE", settings.smtp_ca_file))
    return problems


def _password_reset_problems(settings: Settings) -> list[str]:
    """``PASSWORD_RESET_URL`` is an absolute http(s) URL without a fragment; https outside development."""
    url = settings.password_reset_url
    if url is None:
        return []
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment or any(c.isspace() for c in url):
        return [f"PASSWORD_RESET_URL: must be an absolute http(s) URL without a '#fragment' (got {url!r})"]
    if parts.scheme != "https" and settings.environment is not Environment.DEVELOPMENT:
        return [f"PASSWORD_RESET_URL: must be https outside development (a reset link is a credential; got {url!r})"]
    return []


def _ca_bundle_problems(key: str, path: Path) -> list[str]:
    """Whether ``path`` is a file of PEM CA certificates that a TLS client context can load."""
    if not path.is_file():
        return [f"{key}: no such file ({path})"]
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as exc:
        return [f"{key}: not a PEM file of CA certificates ({path}: {exc})"]
    return []


def _hardening_problems(settings: Settings) -> list[str]:
    """Checks of the observability, HTTP hygiene, rate limiting, cache and replica settings."""
    return [
        *_network_problems(settings),
        *_rate_limit_problems(settings),
        *_dependency_problems(settings),
    ]


def _network_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    for key, networks in (
        ("TRUSTED_PROXIES", settings.trusted_proxies),
        ("FORWARDED_CERT_PROXIES", settings.forwarded_cert_proxies),
        ("MONITORING_ALLOWED_NETWORKS", settings.monitoring_allowed_networks),
    ):
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                problems.append(f"{key}: {network!r} is not an IP address or network (CIDR)")
    for host in settings.allowed_hosts:
        wildcard_ok = host == "*" or not host.startswith("*") or host.startswith("*.")
        if not host or not wildcard_ok or "*" in host[1:] or "/" in host or " " in host:
            problems.append(f"ALLOWED_HOSTS: {host!r} must be a host name, '*.' followed by a domain, or '*'")
    if any(char in settings.content_security_policy for char in "\r\n"):
        problems.append("CONTENT_SECURITY_POLICY: must be a single line")
    return problems


def _rate_limit_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    limits = [
        ("RATE_LIMIT_DEFAULT", settings.rate_limit_default),
        ("RATE_LIMIT_LOGIN_ACCOUNT", settings.rate_limit_login_account),
        ("RATE_LIMIT_LOGIN_ACCOUNT_ADDRESS", settings.rate_limit_login_account_address),
        ("RATE_LIMIT_PASSWORD_RESET_ACCOUNT", settings.rate_limit_password_reset_account),
    ]
    for route, limit in settings.rate_limit_routes.items():
        method, _, path = str(route).partition(" ")
        if method.upper() not in HTTP_METHODS or not path.startswith("/"):
            problems.append(f"RATE_LIMIT_ROUTES: {route!r} must be 'METHOD /path/template' (e.g. 'POST /api/v1/x')")
        limits.append((f"RATE_LIMIT_ROUTES[{route}]", str(limit)))
    for key, limit in limits:
        if not _valid_rate_limit(limit):
            problems.append(f"{key}: {limit!r} is not a rate limit such as '100/minute' or '5/second;100/hour'")
    return problems


def _dependency_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    for name, warning, critical in (
        ("DISK", settings.health_disk_warning_percent, settings.health_disk_critical_percent),
        ("MEMORY", settings.health_memory_warning_percent, settings.health_memory_critical_percent),
    ):
        if warning >= critical:
            problems.append(f"HEALTH_{name}_WARNING_PERCENT: must be below HEALTH_{name}_CRITICAL_PERCENT")
    if settings.redis_url is None:
        if settings.cache_enabled and settings.cache_type == "redis":
            problems.append("CACHE_TYPE: 'redis' needs REDIS_URL")
        if settings.rate_limit_storage == "redis":
            problems.append("RATE_LIMIT_STORAGE: 'redis' needs REDIS_URL")
    if settings.cache_enabled and settings.cache_type == "memory" and settings.workers > 1:
        problems.append(
            f"CACHE_TYPE: the in-process cache cannot be invalidated across {settings.workers} workers; "
            "use CACHE_TYPE=redis (with REDIS_URL) or CACHE_ENABLED=false"
        )
    if settings.database_retry_base_delay > settings.database_retry_max_delay:
        problems.append("DATABASE_RETRY_BASE_DELAY: must not exceed DATABASE_RETRY_MAX_DELAY")
    if settings.database_replica_url is not None:
        if not settings.database_replica_url.startswith("postgresql+asyncpg://") or settings.is_sqlite:
            problems.append(
                "DATABASE_REPLICA_URL: a read replica needs PostgreSQL for both DATABASE_URL and the replica "
                "(postgresql+asyncpg://...)"
            )
        if settings.workers > 1 and settings.redis_url is None:
            problems.append(
                "DATABASE_REPLICA_URL: with several workers, REDIS_URL is needed so that every worker knows how "
                "far the replica must have caught up (read-your-writes)"
            )
    return problems


def _valid_rate_limit(text: str) -> bool:
    try:
        return bool(parse_many(text))
    except ValueError:
        return False


def _role_table_problems(table: Mapping[str, Any]) -> list[str]:
    """Check the shape of a ROLE_PERMISSIONS override: ``{role: {"inherits": [...], "permissions": [...]}}``."""
    problems = []
    for role, entry in table.items():
        if not isinstance(entry, dict) or not set(entry) <= {"inherits", "permissions"}:
            problems.append(
                f"ROLE_PERMISSIONS: role {role!r} must map to an object with 'inherits' and/or 'permissions'"
            )
            continue
        for key in ("inherits", "permissions"):
            value = entry.get(key, [])
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                problems.append(f"ROLE_PERMISSIONS: {role}.{key} must be a list of strings")
    return problems


def security_problems(settings: Settings) -> list[str]:
    """Mode prerequisites and the TLS files themselves, one line per problem (the files are really read)."""
    from library_api.config.tls_files import check_tls_files  # noqa: PLC0415 - cryptography loads lazily

    problems: list[str] = []
    decision = decide_security_mode(settings)
    cert, key, ca, crl = settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file, settings.tls_crl_file
    if (cert is None) != (key is None):
        problems.append("TLS_CERT_FILE/TLS_KEY_FILE: set both (the server certificate and its private key) or neither")
    if decision.mode in {"https", "mtls"} and (cert is None or key is None):
        problems.append(f"SECURITY_MODE: {decision.mode!r} needs TLS_CERT_FILE and TLS_KEY_FILE")
    if decision.mode == "mtls" and ca is None:
        problems.append("SECURITY_MODE: 'mtls' needs TLS_CA_FILE, the CA that issues client certificates")
    if crl is not None and ca is None:
        problems.append("TLS_CRL_FILE: a revocation list needs TLS_CA_FILE (it checks client certificates)")
    if settings.forwarded_cert_proxies and ca is None:
        problems.append(
            "FORWARDED_CERT_PROXIES: forwarded client certificates are verified against TLS_CA_FILE; set it, or "
            "empty FORWARDED_CERT_PROXIES"
        )
    if settings.is_production and decision.mode == "http" and not settings.allow_http_behind_proxy:
        problems.append(
            "SECURITY_MODE: production refuses plain HTTP; configure TLS_CERT_FILE and TLS_KEY_FILE, or set "
            "ALLOW_HTTP_BEHIND_PROXY=true when a TLS-terminating proxy is the only way in"
        )
    problems.extend(check_tls_files(cert, key, ca, crl).problems)
    return problems
