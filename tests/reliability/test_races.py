"""Races against a real server with two worker processes on PostgreSQL: bookings for scarce copies, refresh reuse.

Round after round (``budget.booking_races``: N readers, a book with k copies), N readers ask at the same moment
for the same period: exactly k bookings are created, N−k are refused with 409, nothing answers 5xx and the
database holds k rows. Then one refresh token is spent by two clients at once (``budget.refresh_races`` times):
one gets a new pair, the other is told of reuse, and the whole family is revoked, so the winner's new token is
refused too.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio

from library_api.db.base import utcnow
from tests.reliability import budget
from tests.reliability.conftest import Record
from tests.support.cli import invoke
from tests.support.databases import DatabaseTemplate, build_template, drop_template
from tests.support.factories import PASSWORD, bearer, unique_isbn
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess
from tests.support.services import require_postgres

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.slow, pytest.mark.xdist_group("races")]

ADMIN_EMAIL = "race-admin@example.org"


@dataclass
class RaceTrack:
    """The running server, its database and the tokens of the callers."""

    server: ServerProcess
    database_url: str
    admin: dict[str, str]
    readers: list[dict[str, str]]


@pytest_asyncio.fixture(scope="module")
async def postgres_template(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DatabaseTemplate]:
    require_postgres()
    template = await build_template("postgresql", tmp_path_factory.mktemp("race-template"))
    yield template
    await drop_template(template)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("races")


@pytest_asyncio.fixture(scope="module")
async def track(postgres_template: DatabaseTemplate, directory: Path) -> AsyncIterator[RaceTrack]:
    url = await postgres_template.clone(directory)
    created = await asyncio.to_thread(_create_admin, url, directory)
    assert created.returncode == 0, created.stderr
    # What it runs under the race is measured elsewhere: unmeasured, it races at the speed it would in production.
    server = ServerProcess(
        database_url=url,
        directory=directory,
        args=("--workers", "2"),
        env={"RATE_LIMIT_ENABLED": "false"},
        measured=False,
    ).launch()
    try:
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            admin = bearer(await _login(http, ADMIN_EMAIL))
            most = max(readers for readers, _ in budget.current().booking_races)
            readers = await asyncio.gather(*(_reader(http, index) for index in range(most)))
        yield RaceTrack(server, url, admin, list(readers))
    finally:
        await asyncio.to_thread(server.stop)
        await postgres_template.drop_clone(url)
    pids = {
        line.split("[")[1].split("]")[0] for line in server.log_text().splitlines() if "Started server process" in line
    }
    assert len(pids) == 2, "both worker processes served"


def _create_admin(database_url: str, directory: Path) -> subprocess.CompletedProcess[str]:
    arguments = ["--env-file", str(directory / "none.env"), "users", "create", "--email", ADMIN_EMAIL]
    return invoke(
        [*arguments, "--password", PASSWORD, "--role", "admin"], {**TEST_ENVIRONMENT, "DATABASE_URL": database_url}
    )


async def _login(http: httpx.AsyncClient, email: str) -> str:
    answer = await http.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


async def _reader(http: httpx.AsyncClient, index: int) -> dict[str, str]:
    email = f"racer-{index}@example.org"
    registered = await http.post(
        "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "full_name": f"Racer {index}"}
    )
    assert registered.status_code == 201, registered.text
    return bearer(await _login(http, email))


def rounds() -> Iterator[tuple[int, int]]:
    yield from budget.current().booking_races


async def _rows(database_url: str, book_id: int) -> int:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM bookings WHERE book_id = $1", book_id))
    finally:
        await connection.close()


@pytest.mark.parametrize(("readers", "copies"), list(rounds()), ids=str)
async def test_racing_readers_never_overbook(track: RaceTrack, readers: int, copies: int, figures: Record) -> None:
    async with httpx.AsyncClient(base_url=track.server.base_url, timeout=60) as http:
        book = await http.post(
            "/api/v1/books",
            json={"isbn": unique_isbn(), "title": f"Contended {readers}/{copies}", "authors": ["A"], "copies": copies},
            headers=track.admin,
        )
        assert book.status_code == 201, book.text
        book_id = book.json()["id"]
        start = utcnow().replace(microsecond=0) + timedelta(days=5)
        body = {"book_id": book_id, "start": start.isoformat(), "end": (start + timedelta(days=2)).isoformat()}
        answers = await asyncio.gather(
            *(http.post("/api/v1/bookings", json=body, headers=headers) for headers in track.readers[:readers])
        )
    statuses = Counter(answer.status_code for answer in answers)
    rows = await _rows(track.database_url, book_id)
    figures(
        readers=readers,
        copies=copies,
        created=statuses[201],
        refused=statuses[409],
        rows=rows,
        overbooked=max(0, rows - copies),
        server_errors=sum(n for s, n in statuses.items() if s >= 500),
    )
    assert statuses == {201: copies, 409: readers - copies}, statuses
    assert rows == copies
    refused = next(answer for answer in answers if answer.status_code == 409)
    assert refused.headers["content-type"] == "application/problem+json"


async def test_a_refresh_token_spent_twice_at_once_ends_the_session(track: RaceTrack, figures: Record) -> None:
    outcomes: Counter[str] = Counter()
    async with (
        httpx.AsyncClient(base_url=track.server.base_url, timeout=60) as first,
        httpx.AsyncClient(base_url=track.server.base_url, timeout=60) as second,
    ):
        for _ in range(budget.current().refresh_races):
            login = await first.post("/api/v1/auth/login", data={"username": ADMIN_EMAIL, "password": PASSWORD})
            token = login.json()["refresh_token"]
            answers = await asyncio.gather(
                first.post("/api/v1/auth/refresh", json={"refresh_token": token}),
                second.post("/api/v1/auth/refresh", json={"refresh_token": token}),
            )
            statuses = sorted(answer.status_code for answer in answers)
            assert statuses == [200, 401], [answer.text for answer in answers]
            winner = next(answer for answer in answers if answer.status_code == 200)
            loser = next(answer for answer in answers if answer.status_code == 401)
            assert loser.headers["content-type"] == "application/problem+json"
            assert "reuse" in loser.json()["detail"] or "revoked" in loser.json()["detail"]
            after = await first.post("/api/v1/auth/refresh", json={"refresh_token": winner.json()["refresh_token"]})
            assert after.status_code == 401, "the family is revoked: the winner's new token is refused too"
            outcomes["races"] += 1
            outcomes["families_revoked"] += after.status_code == 401
    figures(races=outcomes["races"], families_revoked=outcomes["families_revoked"], server_errors=0)
