"""One permission model for every kind of caller: JWT users, API tokens and certificate clients.

A permission is a colon-separated name (``books:write``, ``bookings:read:any``). Roles map to permissions
through a table with inheritance and ``*`` wildcards (``books:*`` grants every ``books:...`` permission,
``*`` grants all). Operators override or extend the table with the ``ROLE_PERMISSIONS`` setting; the policy
resolves each set of roles once and keeps the answer, so a check on the request path is a set lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Permission(StrEnum):
    """Every permission a route can require; the names are the public contract of the model."""

    ACCOUNT_SELF = "account:self"
    BOOKS_READ = "books:read"
    BOOKS_WRITE = "books:write"
    BOOKINGS_CREATE = "bookings:create"
    BOOKINGS_READ = "bookings:read"
    BOOKINGS_CANCEL = "bookings:cancel"
    BOOKINGS_READ_ANY = "bookings:read:any"
    BOOKINGS_MANAGE = "bookings:manage"
    USERS_MANAGE = "users:manage"
    TOKENS_MANAGE = "tokens:manage"
    BROADCAST_SEND = "broadcast:send"
    EVENTS_SUBSCRIBE = "events:subscribe"
    METRICS_READ = "metrics:read"
    HEALTH_READ = "health:read"


class Role(StrEnum):
    """Roles known to the service; certificate and token clients may carry further ones from configuration."""

    ANONYMOUS = "anonymous"
    READER = "reader"
    LIBRARIAN = "librarian"
    ADMIN = "admin"
    MONITOR = "monitor"


USER_ROLES = (Role.READER, Role.LIBRARIAN, Role.ADMIN)
"""Roles a user account can hold (service roles such as ``monitor`` belong to tokens and certificates)."""

DEFAULT_ROLE_TABLE: dict[str, dict[str, list[str]]] = {
    Role.ANONYMOUS: {"permissions": [Permission.BOOKS_READ]},
    Role.READER: {
        "inherits": [Role.ANONYMOUS],
        "permissions": [
            Permission.ACCOUNT_SELF,
            Permission.BOOKINGS_CREATE,
            Permission.BOOKINGS_READ,
            Permission.BOOKINGS_CANCEL,
            Permission.EVENTS_SUBSCRIBE,
        ],
    },
    Role.LIBRARIAN: {
        "inherits": [Role.READER],
        "permissions": [
            Permission.BOOKS_WRITE,
            Permission.BOOKINGS_READ_ANY,
            Permission.BOOKINGS_MANAGE,
            Permission.BROADCAST_SEND,
        ],
    },
    Role.ADMIN: {"permissions": ["*"]},
    Role.MONITOR: {"permissions": [Permission.METRICS_READ, Permission.HEALTH_READ, Permission.BOOKS_READ]},
}
"""The shipped role table: readers book, librarians run the catalogue, admins may do everything."""


def grants(held: frozenset[str], needed: str) -> bool:
    """Whether a set of permission patterns grants ``needed``, honouring ``*`` wildcards at any level."""
    if needed in held or "*" in held:
        return True
    parts = needed.split(":")
    return any(":".join(parts[:depth]) + ":*" in held for depth in range(1, len(parts)))


@dataclass(slots=True)
class PermissionPolicy:
    """The resolved role table; answers which permissions a set of roles holds."""

    table: dict[str, dict[str, list[str]]]
    _resolved: dict[frozenset[str], frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> PermissionPolicy:
        """The default table with operator entries replacing (or adding) whole roles."""
        table = {str(role): dict(entry) for role, entry in DEFAULT_ROLE_TABLE.items()}
        for role, entry in overrides.items():
            table[str(role)] = {key: [str(item) for item in value] for key, value in entry.items()}
        return cls(table=table)

    @property
    def roles(self) -> frozenset[str]:
        """Every role the table knows."""
        return frozenset(self.table)

    def permissions_for(self, roles: Iterable[str]) -> frozenset[str]:
        """All permission patterns granted to ``roles``, following inheritance; unknown roles grant nothing."""
        key = frozenset(roles)
        cached = self._resolved.get(key)
        if cached is not None:
            return cached
        granted: set[str] = set()
        seen: set[str] = set()
        pending = list(key)
        while pending:
            role = pending.pop()
            if role in seen or role not in self.table:
                continue
            seen.add(role)
            entry = self.table[role]
            granted.update(entry.get("permissions", []))
            pending.extend(entry.get("inherits", []))
        result = frozenset(granted)
        self._resolved[key] = result
        return result

    def known(self, roles: Iterable[str]) -> frozenset[str]:
        """The subset of ``roles`` that the table defines (certificate clients may carry foreign ones)."""
        return frozenset(role for role in roles if role in self.table)
