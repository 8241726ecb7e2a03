"""The role table: inheritance, wildcards, operator overrides, and every route declaring what it needs."""

from __future__ import annotations

from fastapi import FastAPI

from library_api.app import create_app
from library_api.config import load_settings
from library_api.dependencies.permissions import PERMISSION_ATTRIBUTE, PUBLIC
from library_api.security.permissions import Permission, PermissionPolicy, grants
from tests.support.routes import ApiRoute, api_routes


def test_inheritance_and_wildcards() -> None:
    policy = PermissionPolicy.from_overrides({})
    reader = policy.permissions_for({"reader"})
    librarian = policy.permissions_for({"librarian"})
    admin = policy.permissions_for({"admin"})
    assert grants(reader, Permission.BOOKS_READ) and grants(reader, Permission.BOOKINGS_CREATE)
    assert not grants(reader, Permission.BOOKS_WRITE)
    assert reader < librarian
    assert grants(librarian, Permission.BOOKS_WRITE) and not grants(librarian, Permission.USERS_MANAGE)
    assert all(grants(admin, permission) for permission in Permission)
    assert policy.permissions_for({"stranger"}) == frozenset()
    assert policy.known({"reader", "stranger"}) == {"reader"}


def test_prefix_wildcards_match_whole_segments() -> None:
    held = frozenset({"bookings:read:*", "books:*"})
    assert grants(held, "bookings:read:any")
    assert grants(held, "books:write")
    assert not grants(held, "bookings:read")
    assert not grants(held, "bookingsx:read:any")
    assert not grants(held, "users:manage")


def test_operator_overrides_replace_and_add_roles() -> None:
    policy = PermissionPolicy.from_overrides(
        {"anonymous": {"permissions": []}, "auditor": {"inherits": ["monitor"], "permissions": ["bookings:read:any"]}}
    )
    assert policy.permissions_for({"anonymous"}) == frozenset()
    assert not grants(policy.permissions_for({"reader"}), Permission.BOOKS_READ)  # inherited from anonymous
    auditor = policy.permissions_for({"auditor"})
    assert grants(auditor, Permission.METRICS_READ) and grants(auditor, Permission.BOOKINGS_READ_ANY)


def test_cycles_in_inheritance_terminate() -> None:
    policy = PermissionPolicy.from_overrides({"a": {"inherits": ["b"], "permissions": ["x"]}, "b": {"inherits": ["a"]}})
    assert policy.permissions_for({"b"}) == {"x"}


def declared_permissions(route: ApiRoute) -> list[str]:
    found = []
    pending = list(route.dependant.dependencies)
    while pending:
        dependency = pending.pop()
        marker = getattr(dependency.call, PERMISSION_ATTRIBUTE, None)
        if marker is not None:
            found.append(marker)
        pending.extend(dependency.dependencies)
    return found


def test_every_route_declares_exactly_one_permission_or_public() -> None:
    app: FastAPI = create_app(load_settings(env={}, env_file=None))
    routes = list(api_routes(app))
    assert len(routes) > 10
    for route in routes:
        declared = declared_permissions(route)
        assert len(declared) == 1, f"{route.methods} {route.path} declares {declared}"
        assert declared[0] == PUBLIC or declared[0] in {p.value for p in Permission}
