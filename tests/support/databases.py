"""Test databases built by running the real migrations: a template per backend, cheap clones per test."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from library_api.config import Settings
from library_api.db import migrate
from library_api.db.engine import create_engine
from tests.support.services import POSTGRES_ADMIN_DSN, POSTGRES_HOST, POSTGRES_PORT


@dataclass
class DatabaseTemplate:
    """A migrated, empty database that tests copy instead of migrating again."""

    backend: str
    location: str  # file path (sqlite) or database name (postgresql)

    def url_for(self, name: str) -> str:
        if self.backend == "sqlite":
            return f"sqlite+aiosqlite:///{name}"
        return f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"

    @property
    def url(self) -> str:
        return self.url_for(self.location)

    async def clone(self, directory: Path) -> str:
        """A new database with the template's schema; returns its URL."""
        if self.backend == "sqlite":
            target = directory / f"clone-{uuid.uuid4().hex[:8]}.db"
            shutil.copyfile(self.location, target)
            return self.url_for(str(target))
        name = f"library_test_{uuid.uuid4().hex[:12]}"
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.location}"')
        finally:
            await connection.close()
        return self.url_for(name)

    async def drop_clone(self, url: str) -> None:
        if self.backend == "sqlite":
            return
        name = url.rsplit("/", 1)[1]
        await drop_postgres_database(name)


@contextlib.asynccontextmanager
async def empty_postgres_database(prefix: str) -> AsyncIterator[str]:
    """A new empty PostgreSQL database named ``prefix`` plus a random suffix, dropped when the block ends.

    For tests whose server process migrates its own database (``library-api migrate``).
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    try:
        yield name
    finally:
        await drop_postgres_database(name)


@contextlib.contextmanager
def scratch_postgres_database(prefix: str) -> Iterator[str]:
    """The URL of a new empty PostgreSQL database named ``prefix`` plus a random suffix, dropped when the block ends.

    Made and dropped with ``psql``, from a synchronous fixture: for the deployment tests, whose scripts and
    stacks need the PostgreSQL client tools anyway.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres"
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True, timeout=60)
    try:
        yield f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        drop = ["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"]
        subprocess.run(drop, capture_output=True, timeout=60, check=False)


async def drop_postgres_database(name: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def build_template(backend: str, directory: Path) -> DatabaseTemplate:
    """Create an empty database and run every migration on it."""
    if backend == "sqlite":
        template = DatabaseTemplate("sqlite", str(directory / "template.db"))
    else:
        name = f"library_tpl_{uuid.uuid4().hex[:12]}"
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        template = DatabaseTemplate("postgresql", name)
    engine = create_engine(Settings(database_url=template.url))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return template


async def drop_template(template: DatabaseTemplate) -> None:
    if template.backend == "postgresql":
        await drop_postgres_database(template.location)
