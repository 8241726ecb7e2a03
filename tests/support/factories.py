"""Data factories: real rows through the real services, with unique values per call."""

from __future__ import annotations

import itertools
import random
import uuid

from library_api.books.isbn import isbn13_check_digit
from library_api.books.schemas import BookCreate, BookOut
from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from library_api.users.models import User

PASSWORD = "correct-horse-battery"
_counter = itertools.count(1)


def unique_isbn() -> str:
    """A checksum-valid ISBN-13 that no other call returns in this run."""
    first12 = "979" + f"{random.randrange(10**9):09d}"
    return first12 + isbn13_check_digit(first12)


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.org"


async def create_user(ctx: AppContext, role: Role = Role.READER, *, email: str | None = None) -> User:
    async with ctx.database.sessionmaker() as session:
        return await ctx.users.create(
            session,
            email=email or unique_email(role.value),
            password=PASSWORD,
            full_name=f"{role.value.title()} {next(_counter)}",
            role=role,
        )


def token_for(ctx: AppContext, user: User) -> str:
    return ctx.tokens.issue_access(user_id=user.id, role=user.role, token_version=user.token_version).token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def user_headers(ctx: AppContext, role: Role = Role.READER) -> tuple[User, dict[str, str]]:
    user = await create_user(ctx, role)
    return user, bearer(token_for(ctx, user))


async def create_book(ctx: AppContext, *, copies: int = 1, **fields: object) -> BookOut:
    values: dict[str, object] = {
        "isbn": unique_isbn(),
        "title": f"Book {next(_counter)}",
        "authors": ["Test Author"],
        "copies": copies,
    }
    values.update(fields)
    async with ctx.database.sessionmaker() as session:
        return await ctx.books.create(session, BookCreate.model_validate(values))
