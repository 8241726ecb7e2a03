"""What clients send over the WebSocket, and the body of ``POST /broadcast``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthCommand(_Command):
    """``{"type": "auth", "token": "..."}`` as the first message, for clients that cannot send headers."""

    type: Literal["auth"]
    token: str | None = Field(default=None, max_length=8192)


class SubscribeCommand(_Command):
    """Follow a topic; with ``last_event_id`` and ``last_event_epoch``, first receive what was published after it.

    The epoch is the one the client's position came from (every stream message and ``subscribed`` carry it); a
    position without it, or of another epoch, gets a ``resync`` instead of a replay.
    """

    type: Literal["subscribe"]
    topic: str = Field(min_length=1, max_length=100)
    last_event_id: int | None = Field(default=None, ge=0, le=2**63 - 1)
    last_event_epoch: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")


class UnsubscribeCommand(_Command):
    """Stop following a topic."""

    type: Literal["unsubscribe"]
    topic: str = Field(min_length=1, max_length=100)


class PingCommand(_Command):
    """Ask for a ``pong`` (an application-level liveness check; the server also pings at the protocol level)."""

    type: Literal["ping"]


Command = Annotated[AuthCommand | SubscribeCommand | UnsubscribeCommand | PingCommand, Field(discriminator="type")]

COMMANDS: TypeAdapter[Command] = TypeAdapter(Command)
"""Parses one client message into its command."""


class BroadcastIn(BaseModel):
    """A message from a librarian to every connected client, or to the subscribers of one public topic."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=4000, examples=["The reading room closes at 18:00 today."])
    topic: str | None = Field(
        default=None,
        max_length=100,
        description="`broadcast` (everyone, the default), `books` or `book:<id>`",
        examples=["broadcast"],
    )


class BroadcastOut(BaseModel):
    """Where the broadcast went and the id it got in that topic."""

    topic: str
    id: int
