"""Credentials followed for the life of a connection: revocation, lost permissions, expiry and in-band renewal.

A WebSocket is authenticated at its handshake, but a session may last hours; over HTTP the same credential
stops working within ``PRINCIPAL_CACHE_TTL`` of a deactivation, a role change, a password change, a logout
everywhere or an API token's revocation. So each connection keeps the credential it was admitted with (an access
token, an API token or a client certificate, see :class:`Credential`), and every ``WS_CREDENTIAL_CHECK_INTERVAL``
seconds :class:`CredentialGuard` resolves each distinct credential again through the same
:class:`~library_api.security.authentication.Authenticator` HTTP uses. Its account and token caches make that
one lookup per account or token per ``PRINCIPAL_CACHE_TTL``, whatever the number of connections (and the
accounts of all the access tokens are read together, a few hundred per statement), and the check needs no
message between workers: each worker sees the change when its cache does.

The outcome is applied at once, without awaiting in between, so no event is queued for the connection after
the decision:

* the credential is no longer honoured (a client certificate: revoked by the CRL file as it is now, read
  again whenever it changes) or has expired (past ``WS_AUTH_GRACE`` for access tokens): every
  subscription is dropped and the connection is closed with **4401**;
* the caller lost ``events:subscribe``: the same, with **4403**;
* the caller lost the permission behind some subscriptions (``bookings`` without ``bookings:read:any``):
  those are dropped, each with an ``unsubscribed`` message carrying the reason.

Access tokens are short-lived: ``WS_AUTH_RENEW_NOTICE`` seconds before ``exp`` the client is sent
``auth_expiring``, and it may send ``{"type": "auth", "token": ...}`` with a fresh token of the **same
subject** on the open connection, keeping every subscription and position (answered with ``authenticated``);
a token of another subject, or one that is not valid, is answered with an ``error`` and changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography import x509

from library_api.lifecycle.loops import Loops
from library_api.problems import Unauthorized
from library_api.realtime.held_credential import NO_CREDENTIAL, Credential, Held
from library_api.realtime.topics import TopicError, control, resolve
from library_api.security.authentication import API_KEY_HEADER, Authenticator
from library_api.security.permissions import Permission
from library_api.security.principal import CredentialKind, Principal
from library_api.security.tokens import InvalidToken

if TYPE_CHECKING:
    from library_api.realtime.connection import Connection
    from library_api.realtime.hub import Hub

logger = logging.getLogger("library_api.realtime")


def _round_failed(_exc: Exception) -> None:
    logger.exception("checking the credentials of WebSocket connections failed; retrying")


CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
REASON_EXPIRED = "the credential expired; reconnect with a fresh one"
TOKEN_SUBPROTOCOL_PREFIX = "bearer."  # noqa: S105 - a prefix, not a secret


def presented_token(scope: Any) -> str | None:
    """The token a handshake carried (``Authorization: Bearer``, ``X-API-Key`` or the token subprotocol)."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token).strip()
        elif name == API_KEY_HEADER.encode():
            return str(value.decode("latin-1").strip())
    for offered in scope.get("subprotocols", []):
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return str(offered.removeprefix(TOKEN_SUBPROTOCOL_PREFIX))
    return None


def certificate_expiry(pem: str) -> float | None:
    """When a client certificate stops being valid (``None`` when it cannot be read, which the handshake refused)."""
    try:
        return x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc.timestamp()
    except ValueError:
        return None


class CredentialGuard:
    """Checks every open connection's credential again, periodically and on in-band renewal (see module doc)."""

    def __init__(
        self,
        hub: Hub,
        authenticator: Authenticator,
        *,
        interval: float,
        renew_notice: float,
        grace: float,
        clock: Callable[[], float] = time.time,
        certificate_check: Callable[[str], str | None] | None = None,
    ) -> None:
        self.hub = hub
        self.certificate_check = certificate_check
        """Why a client certificate (PEM) would now be refused at a handshake, e.g. revoked by the current CRL."""
        self.authenticator = authenticator
        self.interval = interval
        self.renew_notice = renew_notice
        self.grace = grace
        self.clock = clock
        """Seconds since the epoch; tests replace it to reach an expiry without waiting for it."""
        self.revoked = 0
        self.expired = 0
        self.dropped = 0
        self._loops = Loops()
        self._held: dict[Credential, Credential] = {}
        """One object per distinct credential held (rebuilt by every sweep): see :meth:`_shared`."""

    # ----- lifecycle -----

    def start(self) -> None:
        """Start the periodic check (idempotent)."""
        if not self._loops.running:
            # Any error ends a round only: a database outage must not end the checks for good.
            self._loops.start("realtime-credentials", self._round, errors=(Exception,), on_error=_round_failed)

    async def stop(self) -> None:
        """Stop the periodic check."""
        await self._loops.stop()

    async def _round(self) -> None:
        await self._loops.pause(self.interval)
        if not self._loops.stopping:
            await self.sweep()

    # ----- what a connection proved -----

    def credential_of(self, principal: Principal, scope: Any, token: str | None = None) -> Credential:
        """The credential behind a principal just authenticated from ``scope`` (or from the first-message token)."""
        if principal.credential is CredentialKind.CERTIFICATE:
            tls = scope.get("extensions", {}).get("tls") or {}
            chain = tls.get("client_cert_chain") or [None]
            pem = chain[0]
            return self._shared(Credential(principal.credential, pem, None if pem is None else certificate_expiry(pem)))
        if principal.credential is CredentialKind.ANONYMOUS:
            return NO_CREDENTIAL
        token = token or presented_token(scope)
        return self._shared(Credential(principal.credential, token, self._token_expiry(principal.credential, token)))

    def _shared(self, credential: Credential) -> Credential:
        """The object already held for an equal credential, else ``credential`` itself.

        Thousands of connections opened with one token then share one credential (and one copy of the token):
        the sweep finds their group by identity, without comparing fields, and each connection holds a
        pointer instead of its own copy of the token.
        """
        return self._held.setdefault(credential, credential)

    def _token_expiry(self, kind: CredentialKind, token: str | None) -> float | None:
        if kind is not CredentialKind.ACCESS_TOKEN or token is None:
            return None  # an API token's end is checked by resolving it, on every sweep
        try:
            return float(self.authenticator.tokens.verify_access(token).expires_at)
        except InvalidToken:
            return self.clock()

    async def _resolve(self, credential: Credential) -> Principal:
        """The principal the credential stands for now (raises :class:`Unauthorized` when it no longer counts)."""
        secret = credential.secret
        if credential.kind is CredentialKind.CERTIFICATE and secret is not None:
            problem = self.certificate_check(secret) if self.certificate_check is not None else None
            if problem is not None:
                raise Unauthorized(problem)
            return self.authenticator.from_certificate(secret)
        if secret is None:
            raise Unauthorized("The credential can no longer be checked.")
        return await self.authenticator.from_bearer(secret)

    # ----- the periodic check -----

    async def sweep(self) -> None:
        """Check every open connection once: one resolution per distinct credential, then each outcome applied.

        The pass over the connections is kept to a lookup each, since it runs twice a second over all of them:
        a connection is only looked at further when its credential is no longer honoured, when its end is near
        (``WS_AUTH_RENEW_NOTICE``), or when the credential now stands for another principal object than the one
        the connection holds.
        """
        groups: dict[Credential, list[Connection]] = {}
        for connection in self.hub.connections():
            held = connection.credential
            if held is not None and held.credential.kind is not CredentialKind.ANONYMOUS:
                group = groups.get(held.credential)
                if group is None:
                    groups[held.credential] = [connection]
                else:
                    group.append(connection)
        self._held = {credential: credential for credential in groups}
        # The accounts behind every access token, read together: one statement per few hundred callers rather than
        # one per caller, one after another, whenever their cached state has expired (every PRINCIPAL_CACHE_TTL).
        await self.authenticator.refresh_accounts(
            credential.secret
            for credential in groups
            if credential.kind is CredentialKind.ACCESS_TOKEN and credential.secret is not None
        )
        for credential, connections in groups.items():
            try:
                principal: Principal | None = await self._resolve(credential)
                reason = ""
            except Unauthorized as exc:
                principal, reason = None, exc.detail or "the credential is no longer valid"
            now = self.clock()
            expires_at = credential.expires_at
            notice = self.renew_notice if credential.renewable else 0.0
            far_from_end = expires_at is None or now < expires_at - notice
            for connection in connections:
                held = connection.credential
                if (
                    connection.closed
                    or held is None
                    or (held.credential is not credential and held.credential != credential)
                ):
                    continue  # closed or renewed while the credential was resolved
                if principal is None:
                    self._end(connection, CLOSE_UNAUTHENTICATED, reason)
                    self.revoked += 1
                elif not far_from_end and not self._in_time(connection, held, now):
                    self.expired += 1
                elif connection.principal is not principal:
                    self.apply(connection, principal)

    def _in_time(self, connection: Connection, held: Held, now: float) -> bool:
        """Close an expired credential's connection; tell one about to expire. ``False`` once closed."""
        expires_at = held.credential.expires_at
        if expires_at is None:
            return True
        grace = self.grace if held.credential.renewable else 0.0
        if now >= expires_at + grace:
            self._end(connection, CLOSE_UNAUTHENTICATED, REASON_EXPIRED)
            return False
        if held.credential.renewable and not held.notified and now >= expires_at - self.renew_notice:
            held.notified = True
            notice = {"exp": int(expires_at), "seconds_left": max(0, round(expires_at - now)), "grace": self.grace}
            connection.offer(control("auth_expiring", notice))
        return True

    def apply(self, connection: Connection, principal: Principal) -> None:
        """Give a connection its caller's current permissions, dropping what they no longer allow (never awaits)."""
        previous = connection.principal
        connection.principal = principal
        if previous.permissions == principal.permissions and previous.user_id == principal.user_id:
            return
        if not self.hub.may_connect(principal):
            reason = f"this credential lacks the '{Permission.EVENTS_SUBSCRIBE}' permission"
            self._end(connection, CLOSE_FORBIDDEN, reason)
            return
        dropped = False
        for stream, topic in list(connection.topics.items()):
            try:
                allowed = resolve(topic, principal).stream == stream
                reason = "the subscription now names another stream"
            except TopicError as exc:
                allowed, reason = False, str(exc)
            if not allowed:
                self.hub.unsubscribe(connection, topic)
                self.dropped += 1
                dropped = True
                connection.offer(control("unsubscribed", {"topic": topic, "was_subscribed": True, "reason": reason}))
        if dropped and not connection.topics:
            self._end(connection, CLOSE_FORBIDDEN, "no subscription is left that this credential allows")

    def _end(self, connection: Connection, code: int, reason: str) -> None:
        logger.info("closing WebSocket client %s of %s: %s", connection.client_id, connection.principal.subject, reason)
        self.hub.end(connection, code, reason)

    # ----- renewal in band -----

    async def renew(self, connection: Connection, token: str) -> None:
        """Replace the connection's credential with a fresh token of the same caller (``auth`` after the start)."""
        try:
            principal = await self.authenticator.from_bearer(token)
        except Unauthorized as exc:
            connection.offer(control("error", {"request": "auth", "message": exc.detail or "invalid token"}))
            return
        if principal.subject != connection.principal.subject:
            message = "the token belongs to another caller; open a new connection for it"
            connection.offer(control("error", {"request": "auth", "message": message}))
            return
        credential = self._shared(
            Credential(principal.credential, token, self._token_expiry(principal.credential, token))
        )
        connection.credential = Held(credential)
        self.apply(connection, principal)
        if not connection.closed:
            expires = None if credential.expires_at is None else int(credential.expires_at)
            data = {"subject": principal.subject, "roles": sorted(principal.roles), "exp": expires}
            connection.offer(control("authenticated", data))
