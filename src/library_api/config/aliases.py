"""Setting names other deployments use, translated to the service's own or refused: never silently ignored.

Operators arrive with a production ``.env`` written for another stack: the course's (its keys are the seed of
this service), Uvicorn's and Gunicorn's environment conventions, Compose files that build URLs from host and
port variables. An ignored key is the worst answer: ``FORWARDED_ALLOW_IPS`` that does nothing leaves every
client behind a proxy sharing the proxy's address and one login limit. So every such key is one of:

* **translated** to our setting when ours is not set (``CORS_ORIGINS`` → ``BACKEND_CORS_ORIGINS``,
  ``POSTGRES_HOST``/``_PORT``/``_DB``/``_USER``/``_PASSWORD`` → ``DATABASE_URL``, ``REDIS_HOST``/``_PORT``/
  ``_PASSWORD`` → ``REDIS_URL``, ``FORWARDED_ALLOW_IPS`` → ``TRUSTED_PROXIES``); a translated key that
  contradicts ours is a problem;
* **read elsewhere**, by the process manager or the kit (``WEB_CONCURRENCY``, ``TIMEOUT``, ``GRACEFUL_TIMEOUT``
  ... by ``deploy/gunicorn.conf.py``; ``GRAFANA_PASSWORD`` by Compose): accepted, and said so in
  ``docs/deployment.md``;
* **refused** with one line naming the replacement (``SESSION_SECRET_KEY``: the service keeps no cookie
  sessions; ``FORWARDED_ALLOW_IPS=*``: any peer could choose its address).

Keys that look like ours but are not (``LOG_LEVL``, ``WS_MAX_SIZ``) are reported as warnings with the closest
setting name. Everything here is pure: :func:`translate` takes the raw keys of one layer (environment or
``.env`` file) and returns values for our settings, problems and warnings; :mod:`library_api.config` applies
them.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

READ_ELSEWHERE: dict[str, str] = {
    "WEB_CONCURRENCY": "deploy/gunicorn.conf.py (worker processes)",
    "WORKERS_PER_CORE": "deploy/gunicorn.conf.py (workers per usable core)",
    "MAX_REQUESTS": "deploy/gunicorn.conf.py (worker recycling)",
    "MAX_REQUESTS_JITTER": "deploy/gunicorn.conf.py (worker recycling jitter)",
    "KEEPALIVE": "deploy/gunicorn.conf.py (idle keep-alive seconds)",
    "HTTP_TIMEOUT_KEEP_ALIVE": "deploy/gunicorn.conf.py (Uvicorn's name for KEEPALIVE, read when it is unset)",
    "TIMEOUT": "deploy/gunicorn.conf.py (silent-worker timeout)",
    "GRACEFUL_TIMEOUT": "deploy/gunicorn.conf.py (never below SHUTDOWN_TIMEOUT: the drain decides)",
    "LIMIT_REQUEST_LINE": "deploy/gunicorn.conf.py (request line limit)",
    "LIMIT_REQUEST_FIELDS": "deploy/gunicorn.conf.py (header count limit)",
    "LIMIT_REQUEST_FIELD_SIZE": "deploy/gunicorn.conf.py (header size limit)",
    "GRAFANA_PASSWORD": "compose.yaml (Grafana's admin password, also spelt GRAFANA_ADMIN_PASSWORD)",
    "GRAFANA_ADMIN_USER": "compose.yaml (Grafana's administrator)",
    "GRAFANA_ADMIN_PASSWORD": "compose.yaml (Grafana's admin password)",
    "REDISCLI_AUTH": "compose.yaml (redis-cli's password in the Redis health check)",
    "GUNICORN_WORKER_CLASS": "deploy/gunicorn.conf.py (worker class override)",
    "LIBRARY_API_IMAGE": "compose.yaml and deploy/deploy.sh (the image to run)",
    "LIBRARY_API_OVERRIDES": "the service itself (command-line flags handed to worker processes)",
    "CONFIG_FILE": "the service itself (the optional configuration file)",
    "TLS_CERTS_DIR": "compose.yaml (nginx's certificate directory)",
    "BACKUP_DIR": "compose.yaml and deploy/backup.sh (where dumps go)",
    "BACKUP_RETENTION_DAYS": "deploy/backup.sh (days of dumps kept)",
}
"""Seed keys that are not settings of the service but of the process manager or the kit, and who reads each."""

REFUSED: dict[str, str] = {
    "SESSION_SECRET_KEY": "the service keeps no cookie sessions (bearer tokens, API tokens, client certificates); "
    "remove it",
    "SESSION_COOKIE_NAME": "the service keeps no cookie sessions; remove it",
    "SESSION_COOKIE_HTTPONLY": "the service keeps no cookie sessions; remove it",
    "SESSION_COOKIE_SECURE": "the service keeps no cookie sessions; remove it",
    "SESSION_COOKIE_SAMESITE": "the service keeps no cookie sessions; remove it",
    "HTTP_MAX_CONNECTIONS": "connections are bounded at the entry point (nginx's worker_connections in "
    "deploy/nginx/nginx.conf) and work by DATABASE_POOL_SIZE and the rate limits; remove it",
}
"""Seed keys the service cannot honour, and what to do instead."""

COMPOSE_ONLY_WITH_URL = frozenset(
    {"POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD", "REDIS_PASSWORD"}
)
"""Database and Redis container keys: building blocks of the URLs, and the containers' own settings."""

TRANSLATED = frozenset(
    {
        "CORS_ORIGINS",
        "FORWARDED_ALLOW_IPS",
        "PROXY_HEADERS",
        "REDIS_HOST",
        "REDIS_PORT",
        *COMPOSE_ONLY_WITH_URL,
    }
)
"""Seed keys that become values of our settings (see the module documentation)."""

OUR_PREFIXES = (
    "API_V1_",
    "CACHE_",
    "CERTIFICATE_",
    "DATABASE_",
    "EMAIL_",
    "HEALTH_",
    "LIBRARY_API_",
    "PASSWORD_",
    "RATE_LIMIT_",
    "REDIS_",
    "SHUTDOWN_",
    "SMTP_",
    "TLS_",
    "WS_",
)
"""Prefixes of our setting groups: an unknown key with one of them is almost certainly a misspelt setting."""


@dataclass
class Translation:
    """What the seed keys of one configuration layer mean: values for our settings, problems and warnings."""

    values: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def known_keys() -> frozenset[str]:
    """Every non-setting key this module gives a meaning to."""
    return frozenset(READ_ELSEWHERE) | frozenset(REFUSED) | TRANSLATED


def translate(raw: Mapping[str, str], settings: Collection[str], *, whole_environment: bool) -> Translation:
    """The meaning of ``raw`` (upper-case keys of one layer) for a service whose setting names are ``settings``.

    ``whole_environment`` says that ``raw`` is the process environment, where most keys belong to others
    (``PATH``, ``HOME``): only keys with one of our prefixes are then judged as misspellings; in a ``.env``
    file every unknown key is.
    """
    result = Translation()
    for key in sorted(raw):
        if key in REFUSED:
            result.problems.append(f"{key}: not supported: {REFUSED[key]}")
    _translate_urls(raw, result)
    _translate_proxies(raw, result)
    _alias(raw, result, "CORS_ORIGINS", "BACKEND_CORS_ORIGINS")
    result.warnings.extend(_misspellings(raw, settings, whole_environment=whole_environment))
    return result


def _alias(raw: Mapping[str, str], result: Translation, theirs: str, ours: str) -> None:
    if theirs not in raw:
        return
    if ours in raw and raw[ours].strip() != raw[theirs].strip():
        result.problems.append(f"{theirs}: contradicts {ours}; keep {ours} only")
    elif ours not in raw:
        result.values[ours] = raw[theirs]


def _translate_urls(raw: Mapping[str, str], result: Translation) -> None:
    if "DATABASE_URL" not in raw and "POSTGRES_HOST" in raw:
        user = quote(raw.get("POSTGRES_USER", "postgres"), safe="")
        password = raw.get("POSTGRES_PASSWORD")
        credentials = f"{user}:{quote(password, safe='')}" if password else user
        result.values["DATABASE_URL"] = (
            f"postgresql+asyncpg://{credentials}@{raw['POSTGRES_HOST']}:{raw.get('POSTGRES_PORT', '5432')}/"
            f"{raw.get('POSTGRES_DB', 'library')}"
        )
    if "REDIS_URL" not in raw and "REDIS_HOST" in raw:
        password = raw.get("REDIS_PASSWORD")
        credentials = f":{quote(password, safe='')}@" if password else ""
        result.values["REDIS_URL"] = f"redis://{credentials}{raw['REDIS_HOST']}:{raw.get('REDIS_PORT', '6379')}/0"
    for key in ("REDIS_HOST", "REDIS_PORT"):
        if key in raw and "REDIS_URL" in raw:
            result.problems.append(f"{key}: REDIS_URL is set too; keep one of them (REDIS_URL names host and port)")


def _translate_proxies(raw: Mapping[str, str], result: Translation) -> None:
    allowed = raw.get("FORWARDED_ALLOW_IPS")
    proxy_headers = raw.get("PROXY_HEADERS", "").strip().lower()
    if allowed is not None:
        if "*" in allowed.split(","):
            result.problems.append(
                "FORWARDED_ALLOW_IPS: '*' would let any peer choose the client address (rate limits, allowed "
                "networks); name the proxies in TRUSTED_PROXIES"
            )
        elif "TRUSTED_PROXIES" in raw:
            result.problems.append("FORWARDED_ALLOW_IPS: contradicts TRUSTED_PROXIES; keep TRUSTED_PROXIES only")
        elif proxy_headers not in ("false", "0", "no"):
            result.values["TRUSTED_PROXIES"] = allowed
    if proxy_headers in ("true", "1", "yes") and allowed is None and "TRUSTED_PROXIES" not in raw:
        result.problems.append(
            "PROXY_HEADERS: forwarded headers are believed only from the proxies named in TRUSTED_PROXIES; set it"
        )
    if proxy_headers in ("false", "0", "no") and raw.get("TRUSTED_PROXIES", "").strip():
        result.problems.append("PROXY_HEADERS: false contradicts TRUSTED_PROXIES; keep TRUSTED_PROXIES only")


def _misspellings(raw: Mapping[str, str], settings: Collection[str], *, whole_environment: bool) -> list[str]:
    names = {name.upper() for name in settings}
    known = names | known_keys()
    warnings = []
    for key in sorted(raw):
        if key in known or (whole_environment and not key.startswith(OUR_PREFIXES)):
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{key}: not a setting of the service, ignored{hint}")
    return warnings
