"""Engine and session factory built from settings: SQLite in WAL mode, or PostgreSQL with a bounded pool.

With ``DATABASE_REPLICA_URL`` a second engine reaches a streaming replica; only catalogue reads use it (see
:mod:`library_api.books.catalogue_cache`, which also keeps them read-your-writes consistent). Statement parameters are
never put into error messages or logs (``hide_parameters``): they can hold password hashes and tokens.

SQLite gets ``BEGIN`` statements from us rather than from the driver, so that a write transaction can ask for
``BEGIN IMMEDIATE`` (see :data:`SQLITE_BEGIN_OPTION`) and take the database write lock before it reads; that is
how bookings are serialised across connections and processes on the embedded database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

from library_api.config import Settings

SQLITE_BEGIN_OPTION = "library_sqlite_begin"
"""Execution option naming the SQLite transaction mode (``DEFERRED`` or ``IMMEDIATE``) for a connection."""

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for another writer before it reports the database as locked."""

DRIVER_TIMEOUT_GRACE = 1.0
"""Seconds the driver waits beyond ``DATABASE_STATEMENT_TIMEOUT_MS`` before it gives up on the server itself.

The server cancels a statement that runs too long and says so; a server that is frozen or cut off cannot, and
without a bound of the driver's own a request would wait as long as the operating system keeps the socket
(asyncpg's defaults: 60 s to connect, no command timeout). The grace lets the server's cleaner error come first.
"""

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection when statements have no timeout (``DATABASE_STATEMENT_TIMEOUT_MS=0``)."""


def driver_timeouts(settings: Settings) -> tuple[float, float | None]:
    """The driver's ``(connect timeout, command timeout)`` in seconds, derived from the statement timeout.

    Both are the statement timeout plus :data:`DRIVER_TIMEOUT_GRACE`: a request that meets a stalled database
    waits at most about the pool timeout, one connect and one statement (and the rollback of what it began)
    before it gets a 503. With statement timeouts off, connecting is still bounded and commands are not.
    """
    if settings.database_statement_timeout_ms <= 0:
        return DEFAULT_CONNECT_TIMEOUT, None
    bound = settings.database_statement_timeout_ms / 1000 + DRIVER_TIMEOUT_GRACE
    return bound, bound


@dataclass(slots=True)
class Database:
    """The engine and the session factories the application uses; ``owned`` says whether closing is ours.

    ``sessionmaker`` opens transactions (every write goes through it); ``read_sessionmaker`` runs each
    statement on its own in autocommit mode, which spares read-only requests the ``BEGIN`` and ``ROLLBACK``
    round trips. A read that needs several statements to agree uses ``sessionmaker`` instead.

    ``read_connection`` serves reads a bare autocommit connection, without a session around it;
    ``pooled_connection`` serves the hottest reads (see :mod:`library_api.db.reads`) the pooled driver
    connection itself. ``bound`` pins every session and read connection to one connection: tests run
    each case inside a transaction on it and roll it back afterwards.
    """

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    read_sessionmaker: async_sessionmaker[AsyncSession] | None = None
    owned: bool = True
    replica: AsyncEngine | None = None
    replica_sessionmaker: async_sessionmaker[AsyncSession] | None = None
    read_engine: AsyncEngine | None = None
    bound: AsyncConnection | None = None
    _read_turns: asyncio.Semaphore | None = field(default=None, repr=False)

    @property
    def engines(self) -> tuple[AsyncEngine, ...]:
        """The primary engine and, when configured, the replica's."""
        return (self.engine,) if self.replica is None else (self.engine, self.replica)

    def __post_init__(self) -> None:
        if self.read_sessionmaker is None:
            self.read_sessionmaker = self.sessionmaker
        if self.read_engine is None:
            self.read_engine = self.engine

    @asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled autocommit connection for one read (the bound connection, when there is one).

        Readers take a turn first (see :meth:`_take_turn`), then check a connection out.
        """
        if self.bound is not None:
            yield self.bound
            return
        assert self.read_engine is not None
        pool = self.read_engine.pool
        if not isinstance(pool, QueuePool):  # an in-memory SQLite database shares one connection
            async with self.read_engine.connect() as connection:
                yield connection
            return
        turns = await self._take_turn(pool)
        try:
            async with self.read_engine.connect() as connection:
                yield connection
        finally:
            turns.release()

    @asynccontextmanager
    async def pooled_connection(self) -> AsyncIterator[PoolProxiedConnection]:
        """A PostgreSQL connection straight from the pool, for a statement the driver runs itself.

        The same turn and the same pool as :meth:`read_connection`, without SQLAlchemy's ``Connection`` around
        the checkout (its execution options, isolation-level bookkeeping and events cost more CPU than the
        statement the hottest reads run). The driver runs outside any transaction, so the connection is in
        autocommit mode as far as the server is concerned. A block that ends in an exception (a read cancelled
        mid-statement) does not hand its connection back for reuse: it is closed, and the pool opens a new one
        when needed.
        """
        if self.bound is not None:
            yield await self.bound.get_raw_connection()
            return
        assert self.read_engine is not None
        pool = self.read_engine.pool
        assert isinstance(pool, QueuePool)
        turns = await self._take_turn(pool)
        try:
            pooled: PoolProxiedConnection = await greenlet_spawn(pool.connect)
            try:
                yield pooled
            except BaseException:
                pooled.invalidate()
                pooled.close()
                raise
            if pool.checkedin() < pool.size():
                pooled.close()  # back into the pool's queue: no I/O, so no greenlet is needed
            else:
                await greenlet_spawn(pooled.close)  # an overflow connection is closed, which awaits the driver
        finally:
            turns.release()

    async def _take_turn(self, pool: QueuePool) -> asyncio.Semaphore:
        """Wait first come, first served for one of as many turns as the pool has connections.

        SQLAlchemy's pool alone lets a newcomer take a connection that was just handed to a woken waiter, which
        then queues again at the back: under a load of hundreds of concurrent reads, a few of them waited
        seconds while the median waited milliseconds. A reader that gets no turn within
        ``DATABASE_POOL_TIMEOUT`` fails like a pool timeout (503 ``database-busy``). The caller releases the
        returned semaphore when its read is over.
        """
        if self._read_turns is None:
            self._read_turns = asyncio.Semaphore(pool.size() + max(pool._max_overflow, 0))
        turns = self._read_turns
        if turns.locked():
            try:
                async with asyncio.timeout(pool.timeout()):
                    await turns.acquire()
            except TimeoutError:
                raise PoolTimeout(f"no turn for a read within {pool.timeout()} s") from None
        else:
            await turns.acquire()
        return turns

    @property
    def reader(self) -> async_sessionmaker[AsyncSession]:
        """The factory of autocommit sessions for read-only work."""
        assert self.read_sessionmaker is not None
        return self.read_sessionmaker

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``: the few places that must differ ask this."""
        return self.engine.dialect.name

    async def dispose(self) -> None:
        """Close every pooled connection, when this object created them."""
        if self.owned:
            await self.engine.dispose()
        if self.replica is not None:
            await self.replica.dispose()


def create_engine(settings: Settings, url_text: str | None = None) -> AsyncEngine:
    """Build the async engine for ``DATABASE_URL`` (or ``url_text``) with the pool and connection settings it needs."""
    url_text = url_text or settings.database_url
    url = make_url(url_text)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(settings, url.database)
    connect_timeout, command_timeout = driver_timeouts(settings)
    connect_args: dict[str, Any] = {
        "server_settings": {
            "application_name": "library-api",
            "statement_timeout": str(settings.database_statement_timeout_ms),
        },
        "timeout": connect_timeout,
        "command_timeout": command_timeout,
    }
    return create_async_engine(
        url_text,
        echo=settings.database_echo,
        hide_parameters=True,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _sqlite_engine(settings: Settings, database: str | None) -> AsyncEngine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        settings.database_url,
        echo=settings.database_echo,
        hide_parameters=True,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        connection.exec_driver_sql(f"BEGIN {options.get(SQLITE_BEGIN_OPTION, 'DEFERRED')}")

    return engine


def create_database(settings: Settings) -> Database:
    """The engine with a transactional and an autocommit session factory (objects stay usable after commit)."""
    engine = create_engine(settings)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    database = Database(
        engine=engine,
        sessionmaker=async_sessionmaker(engine, expire_on_commit=False),
        read_sessionmaker=async_sessionmaker(autocommit, expire_on_commit=False),
        read_engine=autocommit,
    )
    attach_replica(database, settings)
    return database


def attach_replica(database: Database, settings: Settings) -> None:
    """Give ``database`` the replica engine of ``DATABASE_REPLICA_URL`` (autocommit reads), when configured."""
    if settings.database_replica_url is None or database.replica is not None:
        return
    database.replica = create_engine(settings, settings.database_replica_url)
    autocommit = database.replica.execution_options(isolation_level="AUTOCOMMIT")
    database.replica_sessionmaker = async_sessionmaker(autocommit, expire_on_commit=False)


async def begin_write(session: AsyncSession) -> None:
    """Open the session's transaction as a writer, before its first statement.

    On SQLite this is ``BEGIN IMMEDIATE``: the transaction takes the write lock up front, so a read followed
    by a write can never fail on a snapshot another writer has moved on from, and writers queue on
    ``busy_timeout`` instead. On PostgreSQL it is a plain ``BEGIN``; row locks do the serialising there.
    """
    await session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
