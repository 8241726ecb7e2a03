"""The typed container of everything one application instance owns, built by :func:`library_api.app.create_app`.

Routes and dependencies reach it through ``request.app.state.context``; nothing lives at module level, so any
number of independent applications can run in one process (tests build one per case).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from starlette.requests import HTTPConnection

from library_api.auth.resets import PasswordResets
from library_api.auth.service import AuthService
from library_api.bookings.service import BookingService
from library_api.books.catalogue_cache import CatalogueCache
from library_api.books.service import BookService
from library_api.config import Settings
from library_api.db.engine import Database
from library_api.events import EventBus
from library_api.http.networks import Networks
from library_api.lifecycle.shutdown import ShutdownCoordinator
from library_api.notifications.service import Notifier
from library_api.observability.health import HealthMonitor
from library_api.observability.metrics import Metrics
from library_api.realtime.admission import Admission
from library_api.realtime.credentials import CredentialGuard
from library_api.realtime.hub import Hub
from library_api.realtime.relay import Relay
from library_api.resilience.rate_limits import RateLimiter, RateLimitPolicies
from library_api.resilience.redis import GuardedRedis
from library_api.security.authentication import Authenticator
from library_api.security.password_checks import PasswordChecks
from library_api.security.passwords import PasswordService
from library_api.security.permissions import PermissionPolicy
from library_api.security.tokens import TokenService
from library_api.tokens.service import ApiTokenService
from library_api.users.accounts import AccountStateCache
from library_api.users.service import UserService


@dataclass(slots=True)
class AppContext:
    """Settings, resources and services of one application, wired once at construction."""

    settings: Settings
    database: Database
    events: EventBus
    policy: PermissionPolicy
    passwords: PasswordService
    password_checks: PasswordChecks
    tokens: TokenService
    accounts: AccountStateCache
    api_tokens: ApiTokenService
    authenticator: Authenticator
    users: UserService
    auth: AuthService
    books: BookService
    bookings: BookingService
    shutdown: ShutdownCoordinator
    metrics: Metrics
    redis: GuardedRedis | None
    catalogue: CatalogueCache
    rate_limiter: RateLimiter
    rate_limit_policies: RateLimitPolicies
    monitoring_networks: Networks
    health: HealthMonitor
    hub: Hub
    relay: Relay
    admission: Admission
    notifier: Notifier
    credentials: CredentialGuard
    password_resets: PasswordResets


def get_context(connection: HTTPConnection) -> AppContext:
    """The context of the application serving ``connection``."""
    return cast(AppContext, connection.app.state.context)
