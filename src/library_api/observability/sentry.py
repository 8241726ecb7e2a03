"""Errors to operators through Sentry, only when ``SENTRY_DSN`` is configured.

Unhandled errors (and error-level log records, with their request id) become Sentry events. No personal data
is sent (``send_default_pii`` off: no cookies, headers of credentials, or client addresses), and performance
tracing stays off unless ``SENTRY_TRACES_SAMPLE_RATE`` asks for a share of requests.
"""

from __future__ import annotations

import logging

import sentry_sdk

from library_api.config import Settings

logger = logging.getLogger("library_api.sentry")


def init_sentry(settings: Settings) -> bool:
    """Start reporting to Sentry when a DSN is configured; return whether it was started."""
    if settings.sentry_dsn is None:
        return False
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.environment.value,
        release=f"library-api@{settings.version}",
        send_default_pii=False,
        traces_sample_rate=settings.sentry_traces_sample_rate,
    )
    logger.info("error reporting to Sentry is on (environment %s)", settings.environment.value)
    return True
