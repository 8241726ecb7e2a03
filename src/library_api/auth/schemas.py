"""Bodies of the authentication endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TokenPair(BaseModel):
    """An access token for API calls and a refresh token to get the next pair (OAuth2 token response)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str
    refresh_expires_in: int = Field(description="Seconds until the refresh token expires.")


class RefreshRequest(BaseModel):
    """A refresh token to rotate (or, for logout, to revoke with its family)."""

    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=512)


class PrincipalOut(BaseModel):
    """Who the service takes the caller to be: identity, how it was proven, and the roles it holds."""

    subject: str
    name: str | None
    credential: str
    roles: list[str]
