"""Request and response bodies for users.

Request bodies forbid unknown fields, so no client can slip a ``role`` or ``id`` into an update (mass
assignment); only the admin update names ``role`` at all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

FullName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Password = Annotated[str, Field(min_length=8, max_length=1024)]
UserRole = Literal["reader", "librarian", "admin"]


class StrictBody(BaseModel):
    """A request body that rejects fields it does not declare."""

    model_config = ConfigDict(extra="forbid")


class UserCreate(StrictBody):
    """Self-registration: every new account is a reader."""

    email: EmailStr
    password: Password
    full_name: FullName


class UserSelfUpdate(StrictBody):
    """What a user may change about themselves; a new password needs the current one."""

    full_name: FullName | None = None
    password: Password | None = None
    current_password: str | None = Field(default=None, max_length=1024)


class UserAdminUpdate(StrictBody):
    """What an administrator may change about another account."""

    full_name: FullName | None = None
    role: UserRole | None = None
    is_active: bool | None = None


class UserOut(BaseModel):
    """An account as its owner and administrators see it (never the password hash)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    full_name: str
    role: str
    is_active: bool
    created_at: datetime


class UserPage(BaseModel):
    """One page of accounts with the total matching count."""

    items: list[UserOut]
    total: int
    limit: int
    offset: int
