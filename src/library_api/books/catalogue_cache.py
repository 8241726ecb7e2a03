"""Catalogue reads (a book's details, list pages) served from a cache that is never wrong.

**What is cached.** The exact JSON bytes of the answer and their ETag, under ``CACHE_KEY_PREFIX``, for at most
``CACHE_DEFAULT_TIMEOUT`` seconds. A hit costs one lookup and no serialisation; ``If-None-Match`` with the ETag
gets a 304 (see :mod:`library_api.http.conditional`).

**The clock.** ``available_now`` depends on the time as well as on the data: a booking that starts or ends
changes it with no write at all. So an answer is cached only until the next instant at which an active booking
of that book (for list pages: of any book, since the ``available`` filter and every item depend on them) starts
or ends, queried with the answer. Past that instant it is read again; it can never show an availability that
the clock has made false. That clock is :attr:`CatalogueCache.clock` (the system's, unless a test moves it).

**Writes.** Every committed change that can alter an answer publishes a domain event (book created, updated,
deleted, cover changed; booking created, cancelled, returned); :meth:`CatalogueCache.on_event` then starts new
generations of that book's answers and of all list pages (see :mod:`library_api.cache.backends`). With Redis the
generations are shared, so the change is seen by every worker and host at once. If Redis cannot be told, the
worker remembers to discard everything (a new epoch) as soon as Redis answers again; meanwhile nobody reads the
cache, because the circuit is open. Every worker whose circuit opened also discards everything when it closes
again, since another worker's change may have gone unannounced while Redis was unreachable.

**Replica.** With ``DATABASE_REPLICA_URL``, misses are read from the replica, but only when it has replayed at
least up to the *watermark*: the primary's WAL position recorded with the latest catalogue change. A replica
that lags (or a watermark that cannot be known because Redis is down) sends the read to the primary, so a
client always sees its own writes and a stale replica answer is never cached.

**Failures.** Misses retry transient database errors with backoff and jitter; a database that stays unreachable
surfaces as the 503 problem of :mod:`library_api.resilience.database`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.books.repository import BookFilters, Window
from library_api.books.schemas import BookSort
from library_api.books.service import BookService
from library_api.cache.backends import CacheBackend, Lookup
from library_api.cache.outage import OutageGuard
from library_api.db.engine import Database
from library_api.events import DomainEvent
from library_api.observability.metrics import Metrics
from library_api.problems import NotFound
from library_api.resilience.database import is_database_unavailable
from library_api.resilience.redis import RedisUnavailable
from library_api.resilience.retry import Backoff, retry

logger = logging.getLogger("library_api.cache")

T = TypeVar("T")

LISTS = "lists"
"""The generation scope shared by every list page."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A serialised catalogue answer and its (weak) entity tag."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes) -> Answer:
        """The answer for ``body``, with an ETag derived from its bytes."""
        return cls(body, f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"')

    def pack(self) -> bytes:
        """The bytes a cache keeps: the ETag, a newline, the body."""
        return self.etag.encode() + b"\n" + self.body

    @classmethod
    def unpack(cls, packed: bytes) -> Answer:
        """The answer :meth:`pack` stored."""
        etag, _, body = packed.partition(b"\n")
        return cls(body, etag.decode())


def lsn_to_int(lsn: str) -> int:
    """A PostgreSQL WAL position (``16/B374D848``) as one comparable integer."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


class CatalogueCache:
    """Book details and list pages through the cache, with invalidation on every catalogue change."""

    def __init__(
        self,
        *,
        backend: CacheBackend,
        enabled: bool,
        ttl: int,
        database: Database,
        books: BookService,
        metrics: Metrics | None,
        retry_attempts: int,
        backoff: Backoff,
    ) -> None:
        # Epoch seconds: the instant answers are computed for and cached until (public, so a test can move it).
        self.clock: Callable[[], float] = time.time
        self.backend = backend
        self.enabled = enabled
        self.ttl = ttl
        self.database = database
        self.books = books
        self.metrics = metrics
        self.retry_attempts = retry_attempts
        self.backoff = backoff
        self._outage = OutageGuard(backend, what="catalogue cache")

    # ----- reads -----

    async def book(self, book_id: int) -> Answer | None:
        """The details of a book, or ``None`` when there is no such book."""

        async def load(session: AsyncSession, kept: bool) -> tuple[bytes, datetime | None] | None:
            now = datetime.fromtimestamp(self.clock(), UTC)
            try:
                view = await self.books.get(session, book_id, now)
            except NotFound:
                return None
            change = await self.books.next_availability_change(session, now, book_id) if kept else None
            return view.model_dump_json().encode(), change

        return await self._answer(f"book:{book_id}", "detail", "book", load)

    async def page(self, filters: BookFilters, sort: BookSort, window: Window) -> Answer:
        """A page of the catalogue for these filters, sort order and window (offset or cursor)."""
        name = hashlib.blake2b(repr((filters, sort.value, window)).encode(), digest_size=16).hexdigest()

        async def load(session: AsyncSession, kept: bool) -> tuple[bytes, datetime | None]:
            now = datetime.fromtimestamp(self.clock(), UTC)
            page = await self.books.page(session, filters, sort, window, now)
            change = await self.books.next_availability_change(session, now) if kept else None
            return page.model_dump_json().encode(), change

        answer = await self._answer(LISTS, name, "list", load)
        assert answer is not None, "a list page always exists"
        return answer

    async def _answer(
        self,
        scope: str,
        name: str,
        kind: str,
        load: Callable[[AsyncSession, bool], Awaitable[tuple[bytes, datetime | None] | None]],
    ) -> Answer | None:
        """The answer from the cache, or loaded (and kept, when the cache is on and reachable).

        ``load`` is told whether the answer will be kept: only then does it also read how long it stays true
        (the next availability change), a query an answer that is not kept has no use for.
        """
        lookup = await self._lookup(scope, name)
        if lookup is not None and lookup.value is not None:
            if self.metrics is not None:
                self.metrics.cache_hits.labels(kind).inc()
            return Answer.unpack(lookup.value)
        if self.metrics is not None and self.enabled:
            self.metrics.cache_misses.labels(kind).inc()
        kept = lookup is not None and self.enabled
        loaded = await self._read(lambda session: load(session, kept), None if lookup is None else lookup.watermark)
        if loaded is None:
            return None
        body, change = loaded
        answer = Answer.of(body)
        if kept and lookup is not None:
            ttl = float(self.ttl)
            if change is not None:
                ttl = min(ttl, change.timestamp() - self.clock())
            if ttl > 0:
                await self._store(scope, lookup.token, name, answer, ttl)
        return answer

    async def _lookup(self, scope: str, name: str) -> Lookup | None:
        """The cache's view, or ``None`` when the store cannot be reached (then nothing is read or kept)."""
        lookup = await self._outage.lookup(scope, name)
        if lookup is None:
            return None
        if not self.enabled:
            return Lookup(lookup.token, None, lookup.watermark)
        return lookup

    async def _store(self, scope: str, token: str, name: str, answer: Answer, ttl: float) -> None:
        try:
            await self.backend.store(scope, token, name, answer.pack(), ttl)
        except RedisUnavailable:
            return

    async def _read(self, load: Callable[[AsyncSession], Awaitable[T]], watermark: int | None) -> T:
        async def attempt() -> T:
            async with self._session(watermark) as session:
                return await load(session)

        return await retry(
            attempt,
            attempts=self.retry_attempts,
            backoff=self.backoff,
            retry_on=is_database_unavailable,
            description="catalogue read",
        )

    @asynccontextmanager
    async def _session(self, watermark: int | None) -> AsyncIterator[AsyncSession]:
        session = await self._choose_session(watermark)
        async with session:
            yield session

    async def _choose_session(self, watermark: int | None) -> AsyncSession:
        """A session on the replica when it has caught up with ``watermark``, on the primary otherwise."""
        replica = self.database.replica_sessionmaker
        if replica is not None and watermark is not None:
            session = replica()
            try:
                if await _replica_caught_up(session, watermark):
                    return session
            except Exception as exc:
                await session.close()
                if not is_database_unavailable(exc):
                    raise
                logger.warning("read replica unreachable (%s); reading from the primary", type(exc).__name__)
                return self.database.reader()
            await session.close()
        return self.database.reader()

    # ----- invalidation -----

    async def on_event(self, event: DomainEvent) -> None:
        """Invalidate what a committed catalogue or booking change makes stale."""
        if event.type.startswith("book."):
            book_id = event.data.get("id")
        elif event.type.startswith("booking."):
            book_id = event.data.get("book_id")
        else:
            return
        await self.invalidate(book_id if isinstance(book_id, int) else None)

    async def invalidate(self, book_id: int | None) -> None:
        """New generations for a book's answers (when given) and for every list page."""
        scopes = [LISTS] if book_id is None else [f"book:{book_id}", LISTS]
        watermark = await self._primary_position() if self.database.replica is not None else 0
        try:
            await self.backend.invalidate(scopes, watermark)
        except RedisUnavailable:
            self._outage.missed()
            logger.warning("catalogue change could not be announced to the cache; it will be emptied on recovery")

    async def _primary_position(self) -> int:
        async with self.database.engine.connect() as connection:
            position = (await connection.execute(text("SELECT pg_current_wal_insert_lsn()::text"))).scalar_one()
        return lsn_to_int(str(position))


async def _replica_caught_up(session: AsyncSession, watermark: int) -> bool:
    replayed = (await session.execute(text("SELECT pg_last_wal_replay_lsn()::text"))).scalar_one_or_none()
    if replayed is None:  # not in recovery: the "replica" is a primary itself
        return True
    return lsn_to_int(str(replayed)) >= watermark
