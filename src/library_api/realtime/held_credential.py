"""What a WebSocket connection proved itself with, kept so that it can be checked again for the connection's life.

The connection holds a :class:`Held` credential; :mod:`library_api.realtime.credentials` checks it again
periodically and on in-band renewal. These types sit apart from that checker so that a connection can name what
it holds without importing the checker, which itself acts on connections and the hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from library_api.security.principal import CredentialKind


@dataclass(frozen=True, slots=True)
class Credential:
    """What a connection proved itself with, kept to check it again: a token or a certificate, and its end.

    ``secret`` is the token (access or API) or the certificate's PEM; it is never logged or sent anywhere.
    ``expires_at`` is the end of its lifetime in seconds since the epoch (``None``: no end).

    The hash is computed once: the periodic check groups every open connection by its credential, and hashing
    the three fields (an enum's hash is a Python call) for each of thousands of connections twice a second
    showed in the broadcast latency.
    """

    kind: CredentialKind
    secret: str | None = None
    expires_at: float | None = None
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.kind, self.secret, self.expires_at)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def renewable(self) -> bool:
        """Whether the client is expected to renew it in band before it expires (access tokens)."""
        return self.kind is CredentialKind.ACCESS_TOKEN


NO_CREDENTIAL = Credential(CredentialKind.ANONYMOUS)
"""An anonymous connection's credential: nothing to check again."""


class Held:
    """A connection's credential and whether it has been told that the credential is about to expire."""

    __slots__ = ("credential", "notified")

    def __init__(self, credential: Credential) -> None:
        self.credential = credential
        self.notified = False
