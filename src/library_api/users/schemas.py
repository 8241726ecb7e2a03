"""Request and response bodies for users.

Request bodies forbid unknown fields, so no client can slip a ``role`` or ``id`` into an update (mass
assignment); only the admin update names ``role`` at all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, WithJsonSchema

NON_BLANK = r"[^\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""A character that is not whitespace, spelled out as the characters ``str.strip`` removes (``\\S`` differs
between regular-expression dialects), so that the schema's pattern and the code agree on every input."""

FullName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=NON_BLANK,
        description="1 to 200 characters, at least one of them not whitespace; stored without leading and "
        "trailing whitespace",
    ),
    AfterValidator(str.strip),
]
"""A person's name as given: the length and the pattern hold for the value sent, which is stored stripped."""
Password = Annotated[str, Field(min_length=8, max_length=1024)]
UserRole = Literal["reader", "librarian", "admin"]
MAX_EMAIL_LENGTH = 254


def normalise_email(value: str) -> str:
    """The address in normal form when it is a syntactically valid mailbox; ``ValueError`` otherwise.

    Syntax only, as the OpenAPI ``format: email`` promises, without DNS look-ups. The ``.test`` names are
    accepted like any other (RFC 6761 asks applications not to treat them as special); names that can never
    carry mail (``.invalid``, ``.localhost``, ``.local``, ``.onion``, ``.arpa``) are still refused.
    """
    if len(value) > MAX_EMAIL_LENGTH:
        raise ValueError(f"value is not a valid email address: longer than {MAX_EMAIL_LENGTH} characters")
    try:
        checked = validate_email(value, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ValueError(f"value is not a valid email address: {exc}") from None
    return checked.normalized


EmailAddress = Annotated[
    str,
    AfterValidator(normalise_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": MAX_EMAIL_LENGTH}),
]
"""An e-mail address, checked for syntax and normalised (the domain lower-cased)."""


class StrictBody(BaseModel):
    """A request body that rejects fields it does not declare."""

    model_config = ConfigDict(extra="forbid")


class UserCreate(StrictBody):
    """Self-registration: every new account is a reader."""

    email: EmailAddress
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
    is_active: StrictBool | None = None  # JSON true/false only: 0 or "no" is not a yes/no answer


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
