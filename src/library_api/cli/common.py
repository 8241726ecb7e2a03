"""What every ``library-api`` command shares: exit codes, error output, settings, and a fresh app context.

Each command loads the settings (reporting every problem, one line each, exit code 2) and then does one job with
the same factories the server uses: :func:`run_with_context` builds an application context of its own
(:func:`library_api.app.build_context`) on a database of its own, runs the job, and closes the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from library_api.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from library_api.db.engine import Database
    from library_api.dependencies.context import AppContext

T = TypeVar("T")

EXIT_CONFIG = 2
EXIT_FAILURE = 1


@dataclass(slots=True)
class CliState:
    """Options of the root command that every subcommand's settings depend on."""

    config_file: Path | None
    env_file: Path


def fail(lines: list[str], code: int = EXIT_FAILURE) -> typer.Exit:
    """Print each line to stderr as an error and return the exit to raise."""
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(code)


def settings_from(ctx: typer.Context, **flags: Any) -> Settings:
    """Load settings with this command's flags on top; exit 2 listing every problem when they are invalid."""
    state: CliState = ctx.obj
    overrides = {key: value for key, value in flags.items() if value is not None}
    warnings: list[str] = []
    try:
        settings = load_settings(overrides, env_file=state.env_file, config_file=state.config_file, warnings=warnings)
    except ConfigError as exc:
        raise fail(exc.problems, EXIT_CONFIG) from None
    for line in warnings:
        typer.echo(f"warning: {line}", err=True)
    return settings


def run_with_database(settings: Settings, job: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``job(database)`` on a database of its own, closed afterwards, and return its result."""
    from library_api.db.engine import create_database

    async def run() -> T:
        database = create_database(settings)
        try:
            return await job(database)
        finally:
            await database.dispose()

    return asyncio.run(run())


def run_with_context(settings: Settings, job: Callable[[AppContext, AsyncSession], Awaitable[T]]) -> T:
    """Run ``job(context, session)`` on a fresh application context and a session of its database."""
    from library_api.app import build_context

    async def in_context(database: Database) -> T:
        context = build_context(settings, database)
        async with database.sessionmaker() as session:
            return await job(context, session)

    return run_with_database(settings, in_context)
