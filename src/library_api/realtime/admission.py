"""Admission of WebSocket connections: the limits that keep what one client can make a worker hold small.

Anyone can open a WebSocket, and a socket costs the server memory from the handshake on, before any credential
is checked. These limits bound that cost (``docs/realtime.md``, "Abuse limits"):

* **Message size.** ``WS_MAX_SIZE`` (64 KiB) is enforced by the server itself (Uvicorn, Gunicorn's Uvicorn worker,
  Hypercorn) while it reads a frame, for the whole connection, so a larger message is never buffered; a
  connection that is not yet authenticated must also keep its first message within ``WS_PREAUTH_MAX_SIZE``
  (16 KiB), checked here (close 1009).
* **Handshakes per client address** (``WS_HANDSHAKE_RATE``), counted by the service's rate limiter (in Redis,
  exact across workers, when rate limits are stored there) whenever rate limiting is on.
* **Pending connections per address** (``WS_MAX_PENDING_PER_ADDRESS``): connections accepted without a credential
  in the handshake that have not yet sent their ``auth`` message, so no one holds many open through the
  authentication timeout.
* **Connections per principal** (``WS_MAX_CONNECTIONS_PER_PRINCIPAL``): distinct client ids one caller holds open;
  a reconnection with an id the caller already holds replaces the old connection and always passes.

The two connection counts live in this worker's memory: with N workers a caller can hold N times the limit. The
client address is ``scope["client"]`` as the request origin left it (the real client behind trusted proxies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from limits import parse_many

from library_api.config import Settings
from library_api.resilience.rate_limits import RateLimiter
from library_api.security.principal import Principal

CLOSE_MESSAGE_TOO_BIG = 1009
"""Close code for a first message above the pre-authentication limit (RFC 6455 "message too big")."""

CLOSE_TOO_MANY_CONNECTIONS = 4429
"""Close code for a caller that already holds ``WS_MAX_CONNECTIONS_PER_PRINCIPAL`` connections (429 + 4000)."""

HANDSHAKE_POLICY = "ws-handshake"
"""The name under which handshakes are counted by the rate limiter (never one of an HTTP route's policies)."""


class Refusal(StrEnum):
    """Why a connection was refused; the label of ``websocket_refusals_total``."""

    HANDSHAKE_RATE = "handshake_rate"
    PENDING = "pending_auth"
    PRINCIPAL = "principal_connections"
    PREAUTH_SIZE = "preauth_message_size"


@dataclass(frozen=True, slots=True)
class Denied:
    """A refused handshake: why, what to tell the client, and in how many seconds it may try again."""

    reason: Refusal
    detail: str
    retry_after: int


class Claim:
    """One connection's place in its caller's count; :meth:`release` gives it back (once, however often called)."""

    __slots__ = ("_admission", "_released", "client_id", "key")

    def __init__(self, admission: Admission, key: str, client_id: str) -> None:
        self._admission = admission
        self.key = key
        self.client_id = client_id
        self._released = False

    def release(self) -> None:
        """The connection has ended: its caller may open another."""
        if not self._released:
            self._released = True
            self._admission._release(self.key, self.client_id)


class Admission:
    """The limits of one worker: handshake rate (through the rate limiter), pending and per-caller counts."""

    def __init__(
        self, settings: Settings, limiter: RateLimiter, on_refusal: Callable[[Refusal], None] | None = None
    ) -> None:
        self._limiter = limiter
        self._handshake_items = tuple(parse_many(settings.ws_handshake_rate))
        self.handshakes_limited = settings.effective_rate_limit_enabled
        self.preauth_max_size = min(settings.ws_preauth_max_size, settings.ws_max_size)
        self.max_pending = settings.ws_max_pending_per_address
        self.pending_retry_after = max(1, round(settings.ws_auth_timeout))
        self.max_per_principal = settings.ws_max_connections_per_principal
        self._on_refusal = on_refusal
        self._pending: dict[str, int] = {}
        self._held: dict[str, dict[str, int]] = {}
        """Caller -> client id -> its open connections (two while a reconnection replaces the old one)."""
        self.refusals: dict[Refusal, int] = dict.fromkeys(Refusal, 0)

    def refused(self, reason: Refusal) -> None:
        """Count a refusal (and report it to the metrics)."""
        self.refusals[reason] += 1
        if self._on_refusal is not None:
            self._on_refusal(reason)

    async def check_handshake(self, address: str) -> Denied | None:
        """Count one handshake from ``address``; a :class:`Denied` once ``WS_HANDSHAKE_RATE`` is spent."""
        if not self.handshakes_limited:
            return None
        decision = await self._limiter.hit(self._handshake_items, HANDSHAKE_POLICY, f"address:{address}")
        if decision.allowed:
            return None
        self.refused(Refusal.HANDSHAKE_RATE)
        item = decision.item
        retry_after = max(decision.reset_after, 1)
        return Denied(
            Refusal.HANDSHAKE_RATE,
            f"Too many WebSocket handshakes from this address ({item.amount} per {item.get_expiry()} s); "
            f"retry in {retry_after} s.",
            retry_after,
        )

    def enter_pending(self, address: str) -> Denied | None:
        """Take a pending slot for an unauthenticated connection from ``address``, or refuse when all are taken."""
        held = self._pending.get(address, 0)
        if held >= self.max_pending:
            self.refused(Refusal.PENDING)
            return Denied(
                Refusal.PENDING,
                f"Too many WebSocket connections from this address are waiting to authenticate ({self.max_pending}); "
                "send the credential with the handshake, or retry once one has authenticated.",
                self.pending_retry_after,
            )
        self._pending[address] = held + 1
        return None

    def leave_pending(self, address: str) -> None:
        """Give back the pending slot of a connection that authenticated, was refused or went away."""
        left = self._pending.get(address, 0) - 1
        if left > 0:
            self._pending[address] = left
        else:
            self._pending.pop(address, None)

    def pending(self, address: str) -> int:
        """Connections from ``address`` waiting to authenticate on this worker."""
        return self._pending.get(address, 0)

    def claim(self, principal: Principal, client_id: str, address: str) -> Claim | None:
        """A place for ``principal``'s connection ``client_id``; ``None`` when it already holds the maximum.

        An anonymous caller (``WS_ALLOW_ANONYMOUS``) is counted per client address.
        """
        key = principal.subject if principal.is_authenticated else f"anonymous@{address}"
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = {}
        elif client_id not in held and len(held) >= self.max_per_principal:
            self.refused(Refusal.PRINCIPAL)
            return None
        held[client_id] = held.get(client_id, 0) + 1
        return Claim(self, key, client_id)

    def held(self, subject: str) -> int:
        """Client ids the caller ``subject`` holds open on this worker."""
        return len(self._held.get(subject, ()))

    def _release(self, key: str, client_id: str) -> None:
        held = self._held[key]  # a claim is released once, so its entries are there
        left = held[client_id] - 1
        if left > 0:
            held[client_id] = left
            return
        held.pop(client_id, None)
        if not held:
            del self._held[key]
