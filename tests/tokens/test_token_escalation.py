"""A caller with ``tokens:manage`` cannot mint a token that outranks it.

The shipped role table gives ``tokens:manage`` to admins only (who hold everything), so the attack needs an
operator's ``ROLE_PERMISSIONS`` that hands it to librarians: then a librarian asking for an ``admin`` token
would have had one.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from library_api.dependencies.context import AppContext
from library_api.security.permissions import DEFAULT_ROLE_TABLE, Permission, Role
from library_api.tokens.models import ApiToken
from tests.conftest import AppFactory
from tests.support.factories import bearer, user_headers
from tests.support.http import client_for

LIBRARIANS_MANAGE_TOKENS = {
    Role.LIBRARIAN.value: {
        "inherits": [str(role) for role in DEFAULT_ROLE_TABLE[Role.LIBRARIAN]["inherits"]],
        "permissions": [*map(str, DEFAULT_ROLE_TABLE[Role.LIBRARIAN]["permissions"]), Permission.TOKENS_MANAGE.value],
    }
}


async def tokens_stored(context: AppContext) -> int:
    async with context.database.sessionmaker() as session:
        return int((await session.execute(select(func.count()).select_from(ApiToken))).scalar_one())


async def issue(http: httpx.AsyncClient, headers: dict[str, str], *roles: str) -> httpx.Response:
    return await http.post("/api/v1/tokens", json={"name": "job", "roles": list(roles)}, headers=headers)


async def librarian_app(app_factory: AppFactory) -> tuple[FastAPI, AppContext, dict[str, str]]:
    app = await app_factory(role_permissions=LIBRARIANS_MANAGE_TOKENS)
    context: AppContext = app.state.context
    _, librarian = await user_headers(context, Role.LIBRARIAN)
    return app, context, librarian


async def test_a_librarian_cannot_mint_an_admin_token(app_factory: AppFactory) -> None:
    app, context, librarian = await librarian_app(app_factory)
    async with client_for(app) as http:
        escalated = await issue(http, librarian, "admin")
        mixed = await issue(http, librarian, "reader", "monitor")  # monitor reads metrics, which librarians cannot
    for refused in (escalated, mixed):
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == "urn:library-api:problem:forbidden"
        assert "token" not in refused.json()
    assert "admin" in escalated.json()["detail"] and "monitor" in mixed.json()["detail"]
    assert "reader" not in mixed.json()["detail"]  # only the roles that exceed are named
    assert await tokens_stored(context) == 0


async def test_a_librarian_may_mint_its_own_role_or_less(app_factory: AppFactory) -> None:
    app, context, librarian = await librarian_app(app_factory)
    async with client_for(app) as http:
        own = await issue(http, librarian, "librarian")
        less = await issue(http, librarian, "reader")
        # the librarian token manages tokens too, and is held to the same rule
        via_token = bearer(str(own.json()["token"]))
        chained: dict[str, Any] = {
            "admin": (await issue(http, via_token, "admin")).status_code,
            "reader": (await issue(http, via_token, "reader")).status_code,
        }
    assert own.status_code == less.status_code == 201
    assert own.json()["roles"] == ["librarian"] and less.json()["roles"] == ["reader"]
    assert chained == {"admin": 403, "reader": 201}
    assert await tokens_stored(context) == 3


async def test_an_admin_still_issues_any_role(app_factory: AppFactory) -> None:
    app = await app_factory(role_permissions=LIBRARIANS_MANAGE_TOKENS)
    _, admin = await user_headers(app.state.context, Role.ADMIN)
    async with client_for(app) as http:
        assert (await issue(http, admin, "admin", "monitor")).status_code == 201
