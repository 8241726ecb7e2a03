"""Argon2id password hashing, run off the event loop so a login never stalls other requests."""

from __future__ import annotations

from anyio import to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_DUMMY_PASSWORD = "timing-equaliser-for-unknown-accounts"  # noqa: S105 - not a credential


class PasswordService:
    """Hashes and verifies passwords with argon2id (the library's RFC 9106 low-memory profile by default).

    Hashing costs tens of milliseconds of CPU by design, so both operations run in a worker thread. Verifying
    against an unknown account still spends the same time (against a dummy hash) so that login timing does
    not reveal which e-mail addresses are registered.
    """

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash = self._hasher.hash(_DUMMY_PASSWORD)

    async def hash(self, password: str) -> str:
        """An argon2id hash of ``password`` in PHC string form."""
        return await to_thread.run_sync(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; ``None`` (no such account) costs the same and answers ``False``."""
        target = password_hash or self._dummy_hash

        def check() -> bool:
            try:
                return self._hasher.verify(target, password)
            except (VerificationError, InvalidHashError):
                return False

        matched = await to_thread.run_sync(check)
        return matched and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether a stored hash uses weaker parameters than the current ones."""
        return self._hasher.check_needs_rehash(password_hash)
