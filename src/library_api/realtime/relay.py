"""The outbox relay: publishes the committed rows of the live event outbox to the broker, in order, then deletes them.

Every worker runs one. A round takes the oldest rows (up to :data:`BATCH`), publishes them one by one through
the hub, and deletes those the broker accepted; a broker that cannot be reached ends the round, and the rows
not published stay for the next one (after a backoff of 0.1 s doubling up to 2 s). Rows therefore outlive
anything that happens to a worker: a Redis outage, a graceful stop in the middle of it, a ``SIGKILL``.

**One round at a time, across processes**, so that rows are published in id order:

* PostgreSQL: the round is one transaction that first takes a transaction-level advisory lock
  (``pg_advisory_xact_lock``), then reads the rows ``FOR UPDATE``, publishes, deletes and commits. A worker
  that dies mid-round loses its connection, and PostgreSQL releases the lock and the rows at once: the next
  worker's round takes them up. (``SKIP LOCKED`` would let two workers publish two batches side by side, out of
  order; the lock costs a waiting worker nothing but a held connection for the length of one round.)
* SQLite: one process at a time holds an exclusive ``flock`` on ``<database>-relay.lock`` beside the database
  file for the round (released by the kernel when the process dies); the rows are read outside any write
  transaction and deleted in a short ``BEGIN IMMEDIATE`` one, so the database write lock is never held while the
  broker is called.

**Waking.** A worker's own commits wake its relay at once (the relay hears every domain event after commit), so
on the happy path an event is published without any polling delay; the request that committed waits for that
round (at most :data:`PUBLISH_WAIT`, and not at all while the broker is failing), so that a client told "201"
finds the change's event already in the topic's stream, as when events were published from memory. Rounds are
shared: however many requests commit meanwhile, one round publishes all their rows. Each relay also looks every
``LIVE_OUTBOX_POLL_INTERVAL`` seconds (1), which is how rows left by a worker that died are published by the
others, and how the backlog gauges are kept current.

**Delivery** is at least once into the broker, and once within an epoch: a relay that dies (or cannot delete)
after the broker accepted a row publishes it again, and the broker recognises the row's key and does not number
it a second time (see :meth:`~library_api.realtime.broker.Broker.publish`).

With a database bound to one connection (tests that roll back every change) no background task runs: each
commit's rows are published inline, by the request that committed them, since one connection cannot serve two
tasks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import orjson
from sqlalchemy import Row, Table, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from library_api.db.base import utcnow
from library_api.db.engine import Database, begin_write
from library_api.events import DomainEvent
from library_api.lifecycle.loops import Loops
from library_api.realtime.broker import BrokerUnavailable
from library_api.realtime.models import LiveEventRow
from library_api.realtime.outbox import decode_routes
from library_api.realtime.topics import Subscription

logger = logging.getLogger("library_api.realtime.relay")

Publish = Callable[[str, Sequence[Subscription], Any, str | None], Awaitable[list[int]]]
"""``(type, routes, data, key) -> ids``: the hub's :meth:`~library_api.realtime.hub.Hub.publish`."""

BATCH = 100
"""Rows per round; a full round is followed by another at once."""

ADVISORY_LOCK = 0x4C495645_4F555442
"""The PostgreSQL advisory lock key of the relay (``LIVEOUTB``): one round at a time in a database."""

LOCK_RETRY = 0.05
"""Seconds before trying again when another SQLite process holds the relay lock."""

BASE_DELAY = 0.1
MAX_DELAY = 2.0
"""Backoff while the broker or the database cannot be reached."""

PUBLISH_WAIT = 0.5
"""Longest time a request that committed waits for the round publishing its event."""

FLUSH_TIMEOUT = 5.0
"""How long stopping keeps publishing what is left; the rest waits in the outbox for the next relay."""

DEPTH_CAP = 100_000
"""Rows counted at most by :meth:`Relay.backlog` (a count that reads the whole backlog must stay cheap)."""

_OUTBOX = cast("Table", LiveEventRow.__table__)


@dataclass(frozen=True, slots=True)
class Backlog:
    """How many rows wait (at most :data:`DEPTH_CAP`) and for how long the oldest has waited (0 when none)."""

    depth: int
    oldest_age: float


class Relay:
    """One worker's relay from the outbox table to the broker."""

    def __init__(
        self,
        database: Database,
        publish: Publish,
        *,
        poll_interval: float,
        batch: int = BATCH,
        on_backlog: Callable[[Backlog], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        publish_wait: float = PUBLISH_WAIT,
    ) -> None:
        self._database = database
        self._publish = publish
        self._poll_interval = poll_interval
        self._batch = batch
        self._on_backlog = on_backlog
        self._clock = clock
        self._publish_wait = publish_wait
        self._inline = database.bound is not None
        self._turn = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loops = Loops()
        self._delay = BASE_DELAY
        self._measured = 0.0
        self._failing = False
        self._begun = 0
        self._ended = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.lock_path = _lock_path(database)
        """Where SQLite relays of several processes take turns (``None``: PostgreSQL, or one process only)."""
        self.published = 0
        """Rows this process published (the broker numbered them)."""
        self.recognised = 0
        """Rows this process published again and the broker recognised (not numbered twice)."""
        self.failures = 0
        """Rounds that ended early because the broker or the database could not be reached."""
        self.waited = 0
        """Rounds that found another process's relay at work (SQLite) and tried again shortly after."""

    # ----- lifecycle -----

    async def start(self) -> None:
        """Start the background loop (nothing with a bound database: rows are then published inline)."""
        if not self._loops.running and not self._inline:
            self._delay, self._measured = BASE_DELAY, 0.0
            self._loops.start("realtime-outbox-relay", self._round)

    async def stop(self, flush_timeout: float = FLUSH_TIMEOUT) -> None:
        """Finish the current round, publish what is left within ``flush_timeout``, and say what still waits."""
        if not self._loops.running:
            return
        self._wake.set()
        try:
            async with asyncio.timeout(flush_timeout):
                await self._loops.finish()
                while await self.relay_once() == self._batch:
                    pass
        except (TimeoutError, BrokerUnavailable, SQLAlchemyError, OSError) as exc:
            logger.info("stopped publishing live events: %s", exc or type(exc).__name__)
        finally:
            await self._loops.stop()  # what the deadline interrupted
            self._begun += 1  # releases every waiting request
            self._round_ended()
        with contextlib.suppress(SQLAlchemyError, OSError):
            left = await self.backlog()
            if left.depth:
                logger.warning("%d live event(s) wait in the outbox; the next relay to run publishes them", left.depth)

    async def on_domain_event(self, _event: DomainEvent) -> None:
        """The event bus handler: a change committed; wake the relay and wait (bounded) for its next round.

        With a bound database the rows are published here, inline.
        """
        if not self._inline:
            self._wake.set()
            if not self._loops.running or self._loops.stopping or self._failing:
                return
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((self._begun + 1, waiter))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), timeout=self._publish_wait)
            return
        try:
            while await self.relay_once() == self._batch:
                pass
        except (BrokerUnavailable, SQLAlchemyError) as exc:
            logger.warning("live events left in the outbox: %s", exc)

    # ----- rounds -----

    async def relay_once(self) -> int | None:
        """One round: publish the oldest rows and delete those the broker accepted; how many it did.

        ``None`` when another process held the relay lock (SQLite). Raises :class:`BrokerUnavailable` (after
        deleting the rows published before the failure) or the database's error.
        """
        async with self._turn:
            if self._database.dialect == "postgresql":
                return await self._round_postgresql()
            with _exclusive(self.lock_path) as held:
                return await self._round_sqlite() if held else None

    async def _round_postgresql(self) -> int:
        async with self._database.sessionmaker() as session, session.begin():
            await session.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK)))
            rows = (await session.execute(_oldest(self._batch).with_for_update())).all()
            done, failure = await self._publish_rows(rows)
            if done:
                await session.execute(delete(_OUTBOX).where(_OUTBOX.c.id.in_(done)))
        if failure is not None:
            raise failure
        return len(done)

    async def _round_sqlite(self) -> int:
        async with self._database.reader() as session:
            rows = (await session.execute(_oldest(self._batch))).all()
        done, failure = await self._publish_rows(rows)
        if done:
            async with self._database.sessionmaker() as session:
                await begin_write(session)
                await session.execute(delete(_OUTBOX).where(_OUTBOX.c.id.in_(done)))
                await session.commit()
        if failure is not None:
            raise failure
        return len(done)

    async def _publish_rows(self, rows: Sequence[Row[Any]]) -> tuple[list[int], BrokerUnavailable | None]:
        done: list[int] = []
        for row in rows:
            try:
                ids = await self._publish(row.type, decode_routes(row.routes), orjson.Fragment(row.data), row.key)
            except BrokerUnavailable as exc:
                return done, exc
            done.append(row.id)
            if ids:
                self.published += 1
            else:
                self.recognised += 1
        return done, None

    async def backlog(self) -> Backlog:
        """The rows waiting now (counted up to :data:`DEPTH_CAP`) and the age of the oldest, in seconds."""
        capped = select(_OUTBOX.c.created_at).order_by(_OUTBOX.c.id).limit(DEPTH_CAP).subquery()
        async with self._database.reader() as session:
            depth, oldest = (await session.execute(select(func.count(), func.min(capped.c.created_at)))).one()
        if oldest is None:
            return Backlog(int(depth), 0.0)
        if isinstance(oldest, str):  # SQLite hands an aggregate of a subquery back as text
            oldest = datetime.fromisoformat(oldest)
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=self._clock().tzinfo)
        return Backlog(int(depth), max((self._clock() - oldest).total_seconds(), 0.0))

    # ----- the loop -----

    async def _round(self) -> None:
        """One turn of the background loop: a round, then a pause (backing off while the broker or database fail)."""
        self._wake.clear()
        self._begun += 1
        outcome: int | Exception | None
        try:
            outcome = await self.relay_once()
        except (BrokerUnavailable, SQLAlchemyError, OSError) as exc:
            outcome = exc
        finally:
            self._round_ended()
        if isinstance(outcome, Exception):
            self.failures += 1
            if not self._failing:
                logger.warning("cannot publish live events (%s); they wait in the outbox, retrying", outcome)
            self._failing = True
            self._measured = await self._measure()
            await self._loops.pause(self._delay)
            self._delay = min(self._delay * 2, MAX_DELAY)
            return
        if self._failing:
            logger.info("live events: publishing from the outbox again")
            self._failing = False
            self._delay = BASE_DELAY
        if outcome is None:
            self.waited += 1
            await self._loops.pause(LOCK_RETRY)
        elif outcome < self._batch:
            if time.monotonic() - self._measured >= self._poll_interval:
                self._measured = await self._measure()
            await self._loops.pause(self._poll_interval, self._wake)

    def _round_ended(self) -> None:
        """Release the requests waiting for a round that has now ended."""
        self._ended = self._begun
        waiting = []
        for target, waiter in self._waiters:
            if target <= self._ended:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._waiters = waiting

    async def _measure(self) -> float:
        if self._on_backlog is not None:
            try:
                self._on_backlog(await self.backlog())
            except (SQLAlchemyError, OSError) as exc:
                logger.debug("could not measure the live event outbox: %s", exc)
        return time.monotonic()


def _oldest(limit: int) -> Any:
    columns = (_OUTBOX.c.id, _OUTBOX.c.key, _OUTBOX.c.type, _OUTBOX.c.routes, _OUTBOX.c.data)
    return select(*columns).order_by(_OUTBOX.c.id).limit(limit)


def _lock_path(database: Database) -> Path | None:
    """Where SQLite relays of several processes take turns; ``None`` for PostgreSQL and in-memory databases."""
    if database.dialect != "sqlite":
        return None
    name = database.engine.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(f"{name}-relay.lock")


@contextlib.contextmanager
def _exclusive(path: Path | None) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` if no other process does; whether it is held (always without one)."""
    if path is None:
        yield True
        return
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
