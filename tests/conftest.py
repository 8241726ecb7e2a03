"""Fixtures shared by the whole suite.

Every API test runs twice, on SQLite and on PostgreSQL: the ``backend`` fixture is parametrised and the
database fixtures depend on it. Each backend gets one template database built by running the real Alembic
migrations; tests run in a transaction on a clone of it that is rolled back afterwards, or, when they need
committed data seen by other connections or processes, on a clone of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from redis import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from library_api.app import build_context, create_app
from library_api.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from library_api.config import Settings
from library_api.db.engine import Database, create_database, create_engine
from library_api.dependencies.context import AppContext
from library_api.resilience.breaker import CircuitBreaker
from library_api.resilience.redis import GuardedRedis
from tests.support.certs import PKI, make_pki
from tests.support.databases import DatabaseTemplate, build_template, drop_template
from tests.support.measure import COVERAGE_VARIABLES
from tests.support.private_services import PrivateRedis, running_redis
from tests.support.services import REDIS_URL, require_postgres, require_redis

# A test its per-test timeout cannot stop ends its process instead of the run (tests/support/hard_timeout.py).
pytest_plugins = ["tests.support.hard_timeout"]

BACKENDS = ["sqlite", "postgresql"]

FIGURES_PROPERTY = "reliability figures"
"""The ``user_properties`` name under which tests report figures for the summary (``tests/reliability``)."""
_collected_figures: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect reported figures from every test's last report, whether it ran here or in an xdist worker."""
    if report.when != "teardown":
        return
    for name, value in report.user_properties:
        if name == FIGURES_PROPERTY:
            _collected_figures.append(f"{report.nodeid}: {value}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, hand out the tests that start processes (``e2e``, ``slow``) before the quick in-process ones.

    ``make test`` hands out whole modules in the order their first test is collected (``--dist loadfile
    --no-loadscope-reorder``); a slow module left for the end would keep one worker busy while the others idle,
    whereas quick modules fill the gaps evenly. Every worker sorts the same way, so their collections stay
    identical; a run without xdist keeps the file order.
    """
    if not hasattr(config, "workerinput"):
        return
    items.sort(key=lambda item: 0 if item.get_closest_marker("e2e") or item.get_closest_marker("slow") else 1)


@pytest.fixture(scope="module", autouse=True)
def _children_of_marked_modules_unmeasured(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module marked ``children_unmeasured`` starts its child processes without coverage: what they run is
    covered as fully by the rest of the suite, measured by ``scripts/child_coverage.py``
    (``tests/support/child_coverage.py``). Autouse and module-scoped, so it applies before the module's servers start.
    """
    attributing = request.config.pluginmanager.has_plugin("tests.support.child_coverage")  # measures every child
    if attributing or request.node.get_closest_marker("children_unmeasured") is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        for name in COVERAGE_VARIABLES:
            patch.delenv(name, raising=False)
        yield


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if _collected_figures:
        terminalreporter.section(FIGURES_PROPERTY)
        for line in _collected_figures:
            terminalreporter.write_line(line)


def fast_settings(**values: object) -> Settings:
    """Settings for tests: cheap (but real argon2id) hashing and everything else at its default."""
    defaults: dict[str, object] = {
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 1024,
        "password_hash_parallelism": 1,
        "auto_migrate": False,
        "seed_sample_on_empty": False,
        "rate_limit_enabled": False,  # tests of rate limiting turn it on; others must not depend on it
    }
    defaults.update(values)
    return Settings(**defaults)  # type: ignore[arg-type]


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the machine's Redis (``REALTIME_REDIS_PREFIX``); its keys are deleted
    afterwards."""
    require_redis()
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    yield prefix
    with Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{{{prefix}}}*"))
        if keys:
            client.delete(*keys)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """The module's certificates: a CA, its server certificate and every kind of client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis of this test's own, without persistence, that the test may kill, pause and start again."""
    with running_redis() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def cache_backend(request: pytest.FixtureRequest) -> AsyncIterator[CacheBackend]:
    """Each cache store in turn: process memory, and the machine's Redis under a key prefix of the test's own."""
    if request.param == "memory":
        yield MemoryBackend(max_entries=100)
        return
    require_redis()
    redis = GuardedRedis(REDIS_URL, socket_timeout=1.0, breaker=CircuitBreaker("Redis", 3, 5))
    yield RedisBackend(redis, f"t{uuid.uuid4().hex[:10]}_")
    await redis.close()


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("databases")


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_postgres()
    return str(request.param)


@pytest_asyncio.fixture(scope="session")
async def db_template(backend: str, session_dir: Path) -> AsyncIterator[DatabaseTemplate]:
    template = await build_template(backend, session_dir / backend if backend == "sqlite" else session_dir)
    yield template
    await drop_template(template)


@pytest.fixture(scope="session", autouse=True)
def _sqlite_dirs(session_dir: Path) -> None:
    (session_dir / "sqlite").mkdir(exist_ok=True)


@pytest_asyncio.fixture(scope="session")
async def shared_engine(db_template: DatabaseTemplate, session_dir: Path) -> AsyncIterator[AsyncEngine]:
    url = await db_template.clone(session_dir)
    engine = create_engine(fast_settings(database_url=url))
    yield engine
    await engine.dispose()
    await db_template.drop_clone(url)


@pytest_asyncio.fixture
async def database(shared_engine: AsyncEngine) -> AsyncIterator[Database]:
    """A database whose every change is rolled back when the test ends."""
    async with shared_engine.connect() as connection:
        transaction = await connection.begin()
        sessionmaker = async_sessionmaker(
            bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        yield Database(engine=shared_engine, sessionmaker=sessionmaker, owned=False, bound=connection)
        if transaction.is_active:
            await transaction.rollback()


@pytest.fixture
def settings(shared_engine: AsyncEngine, tmp_path: Path) -> Settings:
    return fast_settings(
        database_url=shared_engine.url.render_as_string(hide_password=False), upload_dir=tmp_path / "uploads"
    )


@pytest_asyncio.fixture
async def app(settings: Settings, database: Database) -> AsyncIterator[FastAPI]:
    application = create_app(settings, database=database)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def ctx(app: FastAPI) -> AppContext:
    context: AppContext = app.state.context
    return context


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest_asyncio.fixture
async def committed_url(db_template: DatabaseTemplate, tmp_path: Path) -> AsyncIterator[str]:
    """A database of this test's own, whose commits are real (for concurrency and multi-process tests)."""
    url = await db_template.clone(tmp_path)
    yield url
    await db_template.drop_clone(url)


@pytest_asyncio.fixture
async def committed_ctx(committed_url: str, tmp_path: Path) -> AsyncIterator[AppContext]:
    """The services wired against a committed database, to make users and tokens for the servers a test runs."""
    settings = fast_settings(database_url=committed_url, upload_dir=tmp_path)
    database = create_database(settings)
    yield build_context(settings, database)
    await database.dispose()


AppFactory = Callable[..., Awaitable[FastAPI]]


@pytest_asyncio.fixture(scope="session")
async def sqlite_template(session_dir: Path) -> DatabaseTemplate:
    """A migrated SQLite template for tests of HTTP behaviour that does not depend on the database engine."""
    directory = session_dir / "sqlite-plain"
    directory.mkdir(exist_ok=True)
    return await build_template("sqlite", directory)


@pytest_asyncio.fixture
async def app_factory(sqlite_template: DatabaseTemplate, tmp_path: Path) -> AsyncIterator[AppFactory]:
    """Build started applications with chosen settings (on a private SQLite clone unless given a URL)."""
    async with AsyncExitStack() as stack:

        async def build(**values: object) -> FastAPI:
            url = values.pop("database_url", None) or await sqlite_template.clone(tmp_path)
            settings = fast_settings(database_url=url, upload_dir=tmp_path / "uploads", **values)
            application = create_app(settings)
            await stack.enter_async_context(application.router.lifespan_context(application))
            return application

        yield build
