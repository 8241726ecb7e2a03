"""Request and response bodies of ``/tokens``: the token itself appears once, in the creation answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

TokenName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
RoleName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^\S+$")]


class ApiTokenCreate(BaseModel):
    """What an administrator chooses for a new service token."""

    model_config = ConfigDict(extra="forbid")

    name: TokenName
    roles: list[RoleName] = Field(min_length=1, max_length=10)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="Lifetime; none means until revoked.")


class ApiTokenOut(BaseModel):
    """A service token as listed: everything but the secret."""

    id: int
    name: str
    prefix: str = Field(description="The first characters of the token, to tell tokens apart.")
    roles: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiTokenIssued(ApiTokenOut):
    """A token just created; ``token`` is shown this once and cannot be recovered later."""

    token: str
