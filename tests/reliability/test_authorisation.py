"""The authorisation matrix (OWASP API Security Top 10, 2023): every route called as every kind of caller.

Each row of :data:`MATRIX` is one route (method and template, as the application serves it) with the request to
send and the status each caller must get. Every cell runs in a fresh world (two readers, a librarian, an
administrator, a book with a booking and a cover, a spare book) so that one cell's change never decides
another's answer. The rows cover:

- API1 broken object-level authorisation: another reader's booking is a 404, never a 200 or a 403;
- API3 broken object property level authorisation: no answer carries ``password_hash`` or a hash, no answer
  carries another reader's e-mail address, and a reader cannot set ``role`` or ``is_active`` on themselves;
- API5 broken function-level authorisation: readers cannot manage the catalogue, users, returns, broadcasts
  or metrics; librarians cannot manage users.

Three columns are not written by hand: two are derived from what the route declares (``require(...)`` or
``public()``) and the role table: a client certificate holding only the ``monitor`` role, sent through one real
``mtls`` server process for the whole module (the in-process transport cannot present a certificate), and an
API token with the ``admin`` role revoked through the API before the call. The third is a forged forwarded
certificate (self-signed, ``O=admin``) sent by the peer the service believes for certificates: 401 everywhere.
:func:`test_every_route_has_a_row` walks the
application's routes, so a new route without a row fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from library_api.app import create_app
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.dependencies.permissions import PERMISSION_ATTRIBUTE, PUBLIC
from library_api.security.permissions import Role, grants
from library_api.users.models import User
from tests.conftest import AppFactory, fast_settings
from tests.reliability.conftest import Record
from tests.support.certs import PKI, make_pki
from tests.support.factories import PASSWORD, bearer, create_book, create_user, token_for, unique_email, unique_isbn
from tests.support.http import client_for
from tests.support.images import png
from tests.support.processes import ServerProcess
from tests.support.routes import ApiRoute, api_routes

WRITTEN_CALLERS = ("anonymous", "owner", "other_reader", "librarian", "admin", "revoked_session")
"""Callers whose statuses each row states: ``owner`` is the reader whose booking and account the world holds;
``revoked_session`` is the owner's access token after "log out everywhere"."""

DERIVED_CALLERS = ("monitor_certificate", "revoked_api_token", "forged_forwarded_certificate")
"""Callers whose statuses follow from the route's declared permission (see :func:`derived_statuses`), or, for a
self-signed ``O=admin`` certificate forwarded by the very proxy the service believes for certificates, are 401
on every route: a forwarded certificate that does not verify is refused before any route runs."""

CALLERS = WRITTEN_CALLERS + DERIVED_CALLERS

OUTSIDE_PEER = "203.0.113.7"
"""Calls come from a documentation address, outside the monitoring networks, so only credentials count."""

CERTIFICATE_PROXY = "203.0.113.9"
"""The proxy named in ``FORWARDED_CERT_PROXIES``: the forger's best position, a peer whose headers are read."""

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
pytestmark = pytest.mark.xdist_group("authorisation")


@dataclass
class World:
    """What one cell runs against."""

    ctx: AppContext
    owner: User
    other: User
    book_id: int
    spare_book_id: int
    booking_id: int
    token_id: int
    headers: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class People:
    """The accounts of one row's cells (accounts are costly to make; books and bookings are made per cell)."""

    accounts: dict[str, int]


async def build_people(ctx: AppContext) -> People:
    roles = {"owner": Role.READER, "other_reader": Role.READER, "librarian": Role.LIBRARIAN, "admin": Role.ADMIN}
    return People({caller: (await create_user(ctx, role)).id for caller, role in roles.items()})


async def build_world(ctx: AppContext, http: httpx.AsyncClient, people: People) -> World:
    """A fresh book with a booking and a cover, a spare book, and current tokens (an earlier cell may have
    ended some accounts' sessions)."""
    users = {}
    async with ctx.database.sessionmaker() as session:
        for caller, user_id in people.accounts.items():
            users[caller] = await ctx.users.get(session, user_id)
    headers = {"anonymous": {}, **{caller: bearer(token_for(ctx, user)) for caller, user in users.items()}}
    book = await create_book(ctx, copies=5)
    spare = await create_book(ctx, copies=1)
    booked = await http.post("/api/v1/bookings", json={"book_id": book.id, **period()}, headers=headers["owner"])
    assert booked.status_code == 201, booked.text
    covered = await http.put(
        f"/api/v1/books/{book.id}/cover", files={"file": ("c.png", png(), "image/png")}, headers=headers["admin"]
    )
    assert covered.status_code == 200, covered.text
    issued = await http.post("/api/v1/tokens", json={"name": "job", "roles": ["reader"]}, headers=headers["admin"])
    assert issued.status_code == 201, issued.text
    world = World(
        ctx, users["owner"], users["other_reader"], book.id, spare.id, booked.json()["id"], issued.json()["id"]
    )
    world.headers = headers | {"monitor_certificate": {}}
    return world


async def revoke_owner_sessions(world: World) -> None:
    """Log the owner out everywhere; the token in ``headers['owner']`` is now the ``revoked_session`` caller."""
    async with world.ctx.database.sessionmaker() as session:
        await world.ctx.users.end_all_sessions(session, world.owner.id)
    world.headers["revoked_session"] = world.headers["owner"]


async def revoked_api_token(world: World, http: httpx.AsyncClient) -> dict[str, str]:
    """An ``admin`` API token issued, shown to work, and revoked, all through the API."""
    admin = world.headers["admin"]
    issued = await http.post("/api/v1/tokens", json={"name": "revoked", "roles": ["admin"]}, headers=admin)
    assert issued.status_code == 201, issued.text
    headers = bearer(issued.json()["token"])
    assert (await http.get("/api/v1/tokens", headers=headers)).status_code == 200
    assert (await http.delete(f"/api/v1/tokens/{issued.json()['id']}", headers=admin)).status_code == 204
    return headers


def period() -> dict[str, str]:
    start = utcnow().replace(microsecond=0) + timedelta(days=2)
    return {"start": start.isoformat(), "end": (start + timedelta(days=3)).isoformat()}


async def refresh_token_of_owner(world: World) -> str:
    async with world.ctx.database.sessionmaker() as session:
        return (await world.ctx.auth.login(session, world.owner.email, PASSWORD, "127.0.0.1")).refresh_token


Send = Callable[[httpx.AsyncClient, World, dict[str, str]], Awaitable[httpx.Response]]


def call(method: str, path: str, **options: Any) -> Send:
    """A request with ``{book_id}``, ``{spare_book_id}``, ``{booking_id}`` and ``{user_id}`` filled in.

    An option given as a function is called with the world (for a body that names the world's book, say).
    """

    async def send(http: httpx.AsyncClient, world: World, headers: dict[str, str]) -> httpx.Response:
        url = path.format(
            book_id=world.book_id,
            spare_book_id=world.spare_book_id,
            booking_id=world.booking_id,
            user_id=world.owner.id,
            token_id=world.token_id,
        )
        values = {key: value(world) if callable(value) else value for key, value in options.items()}
        return await http.request(method, url, headers=headers, **values)

    return send


def with_refresh_token(path: str) -> Send:
    async def send(http: httpx.AsyncClient, world: World, headers: dict[str, str]) -> httpx.Response:
        token = await refresh_token_of_owner(world)
        return await http.post(path, json={"refresh_token": token}, headers=headers)

    return send


async def reset_owner_password(http: httpx.AsyncClient, world: World, headers: dict[str, str]) -> httpx.Response:
    """Spend a fresh reset link of the owner's, setting the password it had (later cells still log in with it).

    The reset ends the owner's sessions; when the certificate server answered it, this process's cached state
    of the account is a second behind, so it is dropped for the next cell's fresh tokens.
    """
    issued = await world.ctx.password_resets.issue(world.owner.email, mail=False)
    assert issued is not None
    body = {"token": issued.token, "password": PASSWORD}
    response = await http.post("/api/v1/auth/password-reset/confirm", json=body, headers=headers)
    world.ctx.accounts.forget(world.owner.id)
    return response


def login(http: httpx.AsyncClient, world: World, headers: dict[str, str]) -> Awaitable[httpx.Response]:
    return http.post("/api/v1/auth/login", data={"username": world.owner.email, "password": PASSWORD}, headers=headers)


def expect(
    *,
    anonymous: int,
    owner: int,
    other_reader: int | None = None,
    librarian: int,
    admin: int,
    revoked_session: int = 401,
) -> dict[str, int]:
    """The written statuses; ``other_reader`` is the owner's unless given (it differs where objects are owned)."""
    return {
        "anonymous": anonymous,
        "owner": owner,
        "other_reader": owner if other_reader is None else other_reader,
        "librarian": librarian,
        "admin": admin,
        "revoked_session": revoked_session,
    }


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(WRITTEN_CALLERS, status)


@dataclass(frozen=True)
class Row:
    send: Send
    statuses: dict[str, int]


ANY_READER = expect(anonymous=401, owner=200, librarian=200, admin=200)
STAFF_ONLY = expect(anonymous=401, owner=403, librarian=200, admin=200)
ADMIN_ONLY = expect(anonymous=401, owner=403, librarian=403, admin=200)

MATRIX: dict[tuple[str, str], Row] = {
    ("POST", "/api/v1/auth/register"): Row(
        call(
            "POST",
            "/api/v1/auth/register",
            json=lambda _: {"email": unique_email(), "password": PASSWORD, "full_name": "N"},
        ),
        everyone(201),
    ),
    ("POST", "/api/v1/auth/login"): Row(login, everyone(200)),
    ("POST", "/api/v1/auth/refresh"): Row(with_refresh_token("/api/v1/auth/refresh"), everyone(200)),
    ("POST", "/api/v1/auth/logout"): Row(with_refresh_token("/api/v1/auth/logout"), everyone(204)),
    ("POST", "/api/v1/auth/logout-all"): Row(
        call("POST", "/api/v1/auth/logout-all"), expect(anonymous=401, owner=204, librarian=204, admin=204)
    ),
    ("GET", "/api/v1/auth/me"): Row(call("GET", "/api/v1/auth/me"), ANY_READER),
    # Public; 503 for everyone here because this application has no SMTP server (the mail tests cover 202).
    ("POST", "/api/v1/auth/password-reset"): Row(
        call("POST", "/api/v1/auth/password-reset", json=lambda world: {"email": world.owner.email}), everyone(503)
    ),
    ("POST", "/api/v1/auth/password-reset/confirm"): Row(reset_owner_password, everyone(204)),
    ("GET", "/api/v1/auth/principal"): Row(
        call("GET", "/api/v1/auth/principal"), expect(anonymous=200, owner=200, librarian=200, admin=200)
    ),
    ("PATCH", "/api/v1/auth/me"): Row(call("PATCH", "/api/v1/auth/me", json={"full_name": "Renamed"}), ANY_READER),
    ("GET", "/api/v1/users"): Row(call("GET", "/api/v1/users"), ADMIN_ONLY),
    ("GET", "/api/v1/users/{user_id}"): Row(call("GET", "/api/v1/users/{user_id}"), ADMIN_ONLY),
    ("PATCH", "/api/v1/users/{user_id}"): Row(
        call("PATCH", "/api/v1/users/{user_id}", json={"role": "librarian"}), ADMIN_ONLY
    ),
    ("POST", "/api/v1/tokens"): Row(
        call("POST", "/api/v1/tokens", json={"name": "service", "roles": ["monitor"]}),
        expect(anonymous=401, owner=403, librarian=403, admin=201),
    ),
    ("GET", "/api/v1/tokens"): Row(call("GET", "/api/v1/tokens"), ADMIN_ONLY),
    ("DELETE", "/api/v1/tokens/{token_id}"): Row(
        call("DELETE", "/api/v1/tokens/{token_id}"), expect(anonymous=401, owner=403, librarian=403, admin=204)
    ),
    ("GET", "/api/v1/books"): Row(
        call("GET", "/api/v1/books"), expect(anonymous=200, owner=200, librarian=200, admin=200)
    ),
    ("POST", "/api/v1/books"): Row(
        call("POST", "/api/v1/books", json=lambda _: {"isbn": unique_isbn(), "title": "T", "authors": ["A"]}),
        expect(anonymous=401, owner=403, librarian=201, admin=201),
    ),
    ("GET", "/api/v1/books/{book_id}"): Row(
        call("GET", "/api/v1/books/{book_id}"), expect(anonymous=200, owner=200, librarian=200, admin=200)
    ),
    ("PATCH", "/api/v1/books/{book_id}"): Row(
        call("PATCH", "/api/v1/books/{book_id}", json={"title": "New"}), STAFF_ONLY
    ),
    ("DELETE", "/api/v1/books/{book_id}"): Row(
        call("DELETE", "/api/v1/books/{spare_book_id}"), expect(anonymous=401, owner=403, librarian=204, admin=204)
    ),
    ("GET", "/api/v1/books/{book_id}/cover"): Row(
        call("GET", "/api/v1/books/{book_id}/cover"), expect(anonymous=200, owner=200, librarian=200, admin=200)
    ),
    ("PUT", "/api/v1/books/{book_id}/cover"): Row(
        call("PUT", "/api/v1/books/{book_id}/cover", files=lambda _: {"file": ("c.png", png(3, 3), "image/png")}),
        STAFF_ONLY,
    ),
    ("DELETE", "/api/v1/books/{book_id}/cover"): Row(
        call("DELETE", "/api/v1/books/{book_id}/cover"), expect(anonymous=401, owner=403, librarian=204, admin=204)
    ),
    ("POST", "/api/v1/bookings"): Row(
        call("POST", "/api/v1/bookings", json=lambda world: {"book_id": world.book_id, **period()}),
        expect(anonymous=401, owner=201, librarian=201, admin=201),
    ),
    ("GET", "/api/v1/bookings"): Row(call("GET", "/api/v1/bookings"), ANY_READER),
    ("GET", "/api/v1/bookings/{booking_id}"): Row(
        call("GET", "/api/v1/bookings/{booking_id}"),
        expect(anonymous=401, owner=200, other_reader=404, librarian=200, admin=200),
    ),
    ("POST", "/api/v1/bookings/{booking_id}/cancel"): Row(
        call("POST", "/api/v1/bookings/{booking_id}/cancel"),
        expect(anonymous=401, owner=200, other_reader=404, librarian=200, admin=200),
    ),
    ("POST", "/api/v1/bookings/{booking_id}/return"): Row(
        call("POST", "/api/v1/bookings/{booking_id}/return"), STAFF_ONLY
    ),
    ("POST", "/api/v1/broadcast"): Row(
        call("POST", "/api/v1/broadcast", json={"message": "hello"}),
        expect(anonymous=401, owner=403, librarian=202, admin=202),
    ),
    ("GET", "/health"): Row(call("GET", "/health"), everyone(200)),
    ("GET", "/health/startup"): Row(call("GET", "/health/startup"), everyone(200)),
    ("GET", "/health/ready"): Row(call("GET", "/health/ready"), everyone(200)),
    ("GET", "/health/detailed"): Row(call("GET", "/health/detailed"), ADMIN_ONLY),
    ("GET", "/metrics"): Row(call("GET", "/metrics"), ADMIN_ONLY),
    ("GET", "/"): Row(call("GET", "/"), everyone(200)),
    ("GET", "/console/{name}"): Row(call("GET", "/console/console.js"), everyone(200)),
}


def declared_permission(route: ApiRoute) -> str:
    """What the route declares: a permission name, or ``public``."""
    pending = list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        declared = getattr(dependant.call, PERMISSION_ATTRIBUTE, None)
        if declared is not None:
            return str(declared)
        pending.extend(dependant.dependencies)
    raise AssertionError(f"{route.path} declares no permission")


def derived_statuses(app: FastAPI, key: tuple[str, str], written: dict[str, int]) -> dict[str, int]:
    """The row's written statuses and the derived columns.

    A ``monitor`` certificate gets what an anonymous caller gets on a public route, what an administrator gets
    where the role table grants ``monitor`` the route's permission, and 403 elsewhere (it is authenticated). A
    revoked API token is refused like a revoked session: 401 on every route that is not public.
    """
    ctx: AppContext = app.state.context
    method, path = key
    route = next(route for route in api_routes(app) if route.path == path and method in route.methods)
    permission = declared_permission(route)
    if permission == PUBLIC:
        monitor = written["anonymous"]
    elif grants(ctx.policy.permissions_for({Role.MONITOR.value}), permission):
        monitor = written["admin"]
    else:
        monitor = 403
    revoked = written["revoked_session"] if permission == PUBLIC else 401
    return {
        **written,
        "monitor_certificate": monitor,
        "revoked_api_token": revoked,
        "forged_forwarded_certificate": 401,
    }


@dataclass(frozen=True)
class CertificateServer:
    """The module's ``mtls`` server process and what a cell needs to share its database and uploads."""

    process: ServerProcess
    pki: PKI
    database_url: str
    upload_dir: Path

    def monitor_client(self) -> httpx.AsyncClient:
        """A client presenting the ``monitor`` certificate (and nothing else)."""
        return httpx.AsyncClient(
            base_url=self.process.base_url, verify=self.pki.client_context("monitor"), timeout=30.0
        )


@pytest.fixture(scope="module")
def certificate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertificateServer]:
    """One real ``library-api serve --mode mtls`` for every certificate cell of the module.

    Monitoring networks are moved off loopback so that ``/metrics`` and ``/health/detailed`` are decided by the
    certificate alone, as they are for a caller outside the monitoring networks in process.
    """
    directory = tmp_path_factory.mktemp("authorisation-mtls")
    pki = make_pki(directory / "pki")
    database_url = f"sqlite+aiosqlite:///{directory}/library.db"
    args = ("--mode", "mtls", "--cert", str(pki.cert("server")), "--key", str(pki.key("server")), "--ca", str(pki.ca))
    environment = {"MONITORING_ALLOWED_NETWORKS": "192.0.2.0/24", "RATE_LIMIT_ENABLED": "false"}
    # It serves the matrix's requests; the routes and checks it runs are measured in the in-process tests.
    process = ServerProcess(
        database_url=database_url, directory=directory, args=args, env=environment, scheme="https", measured=False
    ).launch()
    try:
        process.wait_ready(verify=pki.client_context("monitor"))
        yield CertificateServer(process, pki, database_url, Path(process.env["UPLOAD_DIR"]))
    finally:
        process.stop()


@asynccontextmanager
async def sharing_application(server: CertificateServer) -> AsyncIterator[FastAPI]:
    """An in-process application on the certificate server's database and upload directory."""
    application = create_app(
        fast_settings(
            database_url=server.database_url,
            upload_dir=server.upload_dir,
            forwarded_cert_proxies=[CERTIFICATE_PROXY],
            tls_ca_file=server.pki.ca,
        )
    )
    async with application.router.lifespan_context(application):
        yield application


async def run_cell(
    app: FastAPI, people: People, key: tuple[str, str], caller: str, server: CertificateServer
) -> tuple[int, httpx.Response, World]:
    ctx: AppContext = app.state.context
    async with client_for(app, OUTSIDE_PEER) as http:
        world = await build_world(ctx, http, people)
        if caller == "revoked_session":
            await revoke_owner_sessions(world)
        if caller == "revoked_api_token":
            world.headers[caller] = await revoked_api_token(world, http)
        if caller == "monitor_certificate":
            async with server.monitor_client() as remote:
                response = await MATRIX[key].send(remote, world, world.headers[caller])
        elif caller == "forged_forwarded_certificate":
            async with client_for(app, CERTIFICATE_PROXY) as forger:
                response = await MATRIX[key].send(forger, world, server.pki.forwarded("self-signed-admin"))
        else:
            response = await MATRIX[key].send(http, world, world.headers[caller])
    return response.status_code, response, world


def assert_no_exposure(response: httpx.Response, world: World, caller: str) -> None:
    """No hash ever; a reader's e-mail only to that reader and to administrators."""
    text = response.text
    assert "password_hash" not in text and "$argon2" not in text, text[:500]
    if caller not in ("owner", "admin"):
        assert world.owner.email not in text, f"{caller} saw the owner's e-mail: {text[:500]}"
    if caller not in ("other_reader", "admin"):
        assert world.other.email not in text, f"{caller} saw another reader's e-mail: {text[:500]}"


async def test_every_route_has_a_row(app_factory: AppFactory) -> None:
    app = await app_factory()
    served = {(method, route.path) for route in api_routes(app) for method in route.methods if method != "HEAD"}
    assert served - set(MATRIX) == set(), "routes without a row in the authorisation matrix"
    assert set(MATRIX) - served == set(), "rows for routes the application does not serve"
    for key, row in MATRIX.items():
        assert set(row.statuses) == set(WRITTEN_CALLERS), key
        assert set(derived_statuses(app, key, row.statuses)) == set(CALLERS), key


@pytest.mark.e2e
@pytest.mark.parametrize("key", list(MATRIX), ids=[f"{m} {p}" for m, p in MATRIX])
async def test_authorisation_cell(certificate_server: CertificateServer, key: tuple[str, str], figures: Record) -> None:
    """One row: each caller in turn (the revoked session after the others it would disturb: it ends the owner's
    sessions). The application shares the certificate server's database, so every caller sees the same world."""
    async with sharing_application(certificate_server) as app:
        expected = derived_statuses(app, key, MATRIX[key].statuses)
        people = await build_people(app.state.context)
        observed = {}
        for caller in CALLERS:
            status, response, world = await run_cell(app, people, key, caller, certificate_server)
            observed[caller] = status
            assert_no_exposure(response, world, caller)
            if status >= 400:
                assert response.headers["content-type"] == "application/problem+json", response.text[:300]
    figures(
        route=" ".join(key),
        cells=len(observed),
        mismatches=sum(observed[c] != s for c, s in expected.items()),
    )
    assert observed == expected


async def test_a_reader_cannot_raise_their_own_role_or_reactivate(app_factory: AppFactory) -> None:
    app = await app_factory()
    ctx: AppContext = app.state.context
    async with client_for(app, OUTSIDE_PEER) as http:
        world = await build_world(ctx, http, await build_people(ctx))
        for change in ({"role": "admin"}, {"is_active": False}, {"id": 1}, {"email": "x@example.org"}):
            answer = await http.patch("/api/v1/auth/me", json=change, headers=world.headers["owner"])
            assert answer.status_code == 422, answer.text
        registered = await http.post(
            "/api/v1/auth/register",
            json={"email": unique_email(), "password": PASSWORD, "full_name": "N", "role": "admin"},
        )
        assert registered.status_code == 422
        me = await http.get("/api/v1/auth/me", headers=world.headers["owner"])
        assert me.json()["role"] == "reader" and me.json()["is_active"] is True
        assert me.json()["email"] == world.owner.email


async def test_another_readers_bookings_are_invisible(app_factory: AppFactory) -> None:
    app = await app_factory()
    ctx: AppContext = app.state.context
    async with client_for(app, OUTSIDE_PEER) as http:
        world = await build_world(ctx, http, await build_people(ctx))
        listing = await http.get("/api/v1/bookings", headers=world.headers["other_reader"])
        assert listing.json()["total"] == 0
        filtered = await http.get(
            "/api/v1/bookings", params={"user_id": world.owner.id}, headers=world.headers["other_reader"]
        )
        assert world.booking_id not in [item["id"] for item in filtered.json().get("items", [])]
        own = await http.get("/api/v1/bookings", headers=world.headers["owner"])
        assert [item["id"] for item in own.json()["items"]] == [world.booking_id]
