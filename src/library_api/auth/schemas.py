"""Bodies of the authentication endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from library_api.users.schemas import EmailAddress, Password


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


class PasswordResetRequest(BaseModel):
    """The address of the account whose password was forgotten."""

    model_config = ConfigDict(extra="forbid")

    email: EmailAddress


class PasswordResetAccepted(BaseModel):
    """The answer to every accepted reset request, whether or not an account has the address."""

    detail: str = Field(description="What happens next; the same text for every address.")
    expires_in: int = Field(description="Seconds a link sent now stays usable.")


class PasswordResetConfirm(BaseModel):
    """The token of a reset link and the new password (the registration policy applies)."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=512, description="The `token` of the link's fragment.")
    password: Password
