"""``Annotated`` dependency aliases that routes declare in their signatures.

``SessionDep`` gives a request its own database session; ``ContextDep`` the application's wiring;
``CurrentPrincipal`` (from :mod:`library_api.dependencies.permissions`) the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.dependencies.context import AppContext, get_context
from library_api.dependencies.permissions import CurrentPrincipal


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_context(request).database.sessionmaker() as session:
        yield session


async def _read_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_context(request).database.reader() as session:
        yield session


async def _context(request: Request) -> AppContext:
    return get_context(request)


SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]
"""A transactional database session, closed as soon as the route returns (before the response is sent), so its
connection goes back to the pool without waiting for the client."""

ReadSessionDep = Annotated[AsyncSession, Depends(_read_session, scope="function")]
"""An autocommit session for read-only requests: each statement stands alone, no BEGIN/ROLLBACK round trips."""

ContextDep = Annotated[AppContext, Depends(_context)]
"""The application's settings, resources and services."""

__all__ = ["ContextDep", "CurrentPrincipal", "ReadSessionDep", "SessionDep"]
