"""Rate limiting per caller and per route, answered with 429 and the IETF ``RateLimit`` headers.

**Policies.** Every request to a route counts against the policy configured for its route template
(``RATE_LIMIT_ROUTES``, keys ``"METHOD /template"``, values in ``limits`` notation such as ``"5/second;100/hour"``),
or ``RATE_LIMIT_DEFAULT``. The authentication routes have built-in stricter policies counted per client address
(login, registration, refresh: brute force and sign-up abuse come from addresses, not accounts); an operator's
entry for the same route replaces them. Everything else is counted per caller: the authenticated principal, or
the client address of an anonymous one. Failed password checks are counted per account and address by
:mod:`library_api.security.password_checks`, on every route that checks a password; its 429 answers pass through
here, get this route's headers too, and are counted in ``rate_limit_rejections_total`` like this module's own.

**Headers** (draft-ietf-httpapi-ratelimit-headers-09): every limited response carries
``RateLimit-Policy: "<policy>";q=<quota>;w=<window seconds>`` (one item per limit) and
``RateLimit: "<policy>";r=<remaining>;t=<seconds to reset>`` for the tightest limit; a refusal is a 429
problem with ``Retry-After`` as well.

Probes and ``/metrics`` are never limited. The caller is authenticated here (once; the result is left on the
scope for the route's own permission check), so a bad credential is not an error here: it is counted against
the client address, and the route answers 401.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from library_api.http.request_origin import client_address
from library_api.http.routes import ROUTE_TEMPLATE_KEY, RouteTable
from library_api.observability.metrics import Metrics
from library_api.problems import problem_response
from library_api.resilience.rate_limits import Policy, RateLimiter, RateLimitPolicies, limit_headers
from library_api.security.authentication import Authenticator
from library_api.security.principal import PRINCIPAL_SCOPE_KEY, Principal


class RateLimitMiddleware:
    """Counts each HTTP request against its route's policy and refuses it with 429 once the limit is spent."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        policies: RateLimitPolicies,
        authenticator: Authenticator,
        routes: RouteTable,
        metrics: Metrics | None,
        exempt_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.policies = policies
        self.authenticator = authenticator
        self.routes = routes
        self.metrics = metrics
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count, then pass on with the headers added, or answer 429."""
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        template = scope.get(ROUTE_TEMPLATE_KEY) or self.routes.resolve(method, scope["path"])
        policy = self.policies.for_route(method, template)
        identity = await self._identity(scope, policy)
        decision = await self.limiter.hit(policy.items, policy.name, identity)
        headers = limit_headers(policy, decision)
        if not decision.allowed:
            if self.metrics is not None:
                self.metrics.rate_limited.labels(template).inc()
            response = problem_response(
                429,
                "too-many-requests",
                "Too many requests",
                f"The rate limit of this route ({decision.item.amount} per {decision.item.get_expiry()} s) is spent; "
                f"retry in {decision.reset_after} s.",
                instance=scope["path"],
            )
            response.raw_headers.extend([(b"retry-after", str(max(decision.reset_after, 1)).encode()), *headers])
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
                if message["status"] == 429 and self.metrics is not None:
                    self.metrics.rate_limited.labels(template).inc()  # refused by the route (password guessing)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _identity(self, scope: Scope, policy: Policy) -> str:
        address = f"address:{client_address(scope)}"
        if policy.per_address:
            return address
        principal: Principal | None = scope.get(PRINCIPAL_SCOPE_KEY)
        if principal is None:
            try:
                principal = await self.authenticator.authenticate(HTTPConnection(scope))
            except Exception:  # a bad credential (or an unreachable database) is the route's to report
                return address
            scope[PRINCIPAL_SCOPE_KEY] = principal
        return principal.subject if principal.is_authenticated else address
