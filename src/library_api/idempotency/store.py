"""Claiming an idempotency key inside the creating transaction, and answering a retry with the first answer.

A client that sent ``POST /bookings`` and got a timeout, a 503 or a dropped connection cannot know whether the
booking was made: the service may have committed it just before the answer was lost. Retrying with the same
``Idempotency-Key`` header is then safe:

* The key is claimed **first** in the creating transaction (a row with ``status = 0``), then the creation runs,
  then the row gets the answer, and everything commits together: the answer is stored exactly when what it
  describes exists, and an error (404, 409, a timeout) stores nothing, so a retry after an error is judged
  afresh.
* A retry with the same key and the same request gets the stored status and body, with
  ``Idempotent-Replayed: true``; with another request body it gets a 422 ``idempotency-key-reused`` problem.
* Concurrent duplicates: on PostgreSQL the second claim waits on the unique index until the first transaction
  ends, and then replays its answer (or, if the first rolled back, claims the key itself). On SQLite writers
  are serialised, so the second simply finds the first's answer. A claim is never visible unanswered to another
  transaction (it commits with its answer); a duplicate whose claim failed yet finds no answer (the first was
  rolled back or purged in between) gets 409 ``idempotency-key-in-use`` with ``Retry-After`` and may retry.
* Keys are scoped per user and per operation, and expire after ``IDEMPOTENCY_KEY_TTL_HOURS``; expired rows are
  removed when their key is used again and by :meth:`IdempotencyStore.purge_expired`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.db.base import utcnow
from library_api.idempotency.models import IdempotencyRecord
from library_api.problems import Conflict, InvalidInput

KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
"""An ``Idempotency-Key``: 1 to 255 visible ASCII characters (a UUID is the usual choice)."""

IN_USE_RETRY_AFTER = 1
"""Seconds a duplicate that found the key claimed but unanswered is asked to wait."""


class IdempotencyKeyReused(InvalidInput):
    """The key was first used for another request: reusing it for a different body is a client error."""

    slug = "idempotency-key-reused"
    title = "Idempotency key reused"


class IdempotencyKeyInUse(Conflict):
    """The first request with this key has not finished yet."""

    slug = "idempotency-key-in-use"
    title = "Idempotency key in use"


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The first answer to a key: status and JSON body, to send again as they are."""

    status: int
    body: str


def fingerprint(request: Any) -> str:
    """A digest of the request's JSON-able content (keys sorted), to tell a retry from another request."""
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """A key claimed in the current transaction; :meth:`IdempotencyStore.answer` fills in the answer."""

    record: IdempotencyRecord


class IdempotencyStore:
    """Claims keys and keeps answers in the ``idempotency_keys`` table."""

    def __init__(self, ttl: timedelta) -> None:
        self._ttl = ttl

    async def claim(
        self, session: AsyncSession, user_id: int, scope: str, key: str, request: Any
    ) -> Claim | StoredAnswer:
        """Claim ``key`` in ``session``'s (write) transaction, or return the answer a first request got.

        Raises :class:`IdempotencyKeyReused` for the same key with another request and
        :class:`IdempotencyKeyInUse` when the first request with it is still running.
        """
        digest = fingerprint(request)
        found = await self._lookup(session, user_id, scope, key, digest)
        if found is not None:
            return found
        now = utcnow()
        record = IdempotencyRecord(
            user_id=user_id,
            scope=scope,
            key=key,
            fingerprint=digest,
            status=0,
            body="",
            created_at=now,
            expires_at=now + self._ttl,
        )
        session.add(record)
        try:
            await session.flush()
        except IntegrityError:
            # A concurrent request with the same key committed first (PostgreSQL waited for it): replay it.
            await session.rollback()
            found = await self._lookup(session, user_id, scope, key, digest)
            await session.rollback()
            if found is not None:
                return found
            raise IdempotencyKeyInUse(
                "Another request with this Idempotency-Key is being processed; retry shortly.",
                headers={"Retry-After": str(IN_USE_RETRY_AFTER)},
            ) from None
        return Claim(record)

    async def answer(self, session: AsyncSession, claim: Claim, status: int, body: str) -> None:
        """Store the answer of a claimed key (committed with the rest of the transaction)."""
        claim.record.status = status
        claim.record.body = body
        await session.flush()

    async def purge_expired(self, session: AsyncSession) -> int:
        """Delete every expired key; returns how many (run in its own transaction)."""
        result = await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utcnow()))
        await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    async def _lookup(
        self, session: AsyncSession, user_id: int, scope: str, key: str, digest: str
    ) -> StoredAnswer | None:
        record = await session.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.user_id == user_id, IdempotencyRecord.scope == scope, IdempotencyRecord.key == key
            )
        )
        if record is None:
            return None
        if record.expires_at <= utcnow():
            await session.delete(record)
            await session.flush()
            return None
        if record.fingerprint != digest:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used for a different request; use a new key for a new request.",
                field="header.Idempotency-Key",
            )
        return StoredAnswer(record.status, record.body)
