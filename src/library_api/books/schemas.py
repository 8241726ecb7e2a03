"""Request and response bodies for the catalogue."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from library_api.books.isbn import normalize_isbn
from library_api.http.fields import WholeNumber


def _unique(values: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(value, None)
    return list(seen)


ISBN = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=10, max_length=17, pattern=r"^[0-9][0-9 -]*[0-9Xx]$"),
    AfterValidator(normalize_isbn),
    Field(
        description=(
            "ISBN-10 or ISBN-13, hyphens and spaces allowed; stored and returned as ISBN-13. "
            "The check digit must match (422 otherwise)."
        ),
        examples=["978-0-13-235088-4"],
    ),
]
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
AuthorName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=64, pattern=r"^[\w][\w .+#-]*$"),
]
Authors = Annotated[list[AuthorName], Field(min_length=1, max_length=20), AfterValidator(_unique)]
Tags = Annotated[list[Tag], Field(max_length=20), AfterValidator(_unique)]
Year = Annotated[WholeNumber, Field(ge=-3000, le=2100)]
Description = Annotated[str, StringConstraints(max_length=10_000)]
Copies = Annotated[WholeNumber, Field(ge=1, le=10_000)]


class BookCreate(BaseModel):
    """A new catalogue entry."""

    model_config = ConfigDict(extra="forbid")

    isbn: ISBN
    title: Title
    authors: Authors
    tags: Tags = Field(default_factory=list)
    year: Year | None = None
    description: Description | None = None
    copies: Copies = 1


class BookUpdate(BaseModel):
    """A partial change: only the fields present are changed."""

    model_config = ConfigDict(extra="forbid")

    isbn: ISBN | None = None
    title: Title | None = None
    authors: Authors | None = None
    tags: Tags | None = None
    year: Year | None = None
    description: Description | None = None
    copies: Copies | None = None


class BookOut(BaseModel):
    """A catalogue entry with the number of copies free at this moment."""

    id: int
    isbn: str
    title: str
    authors: list[str]
    tags: list[str]
    year: int | None
    description: str | None
    copies: int
    available_now: int
    cover_url: str | None
    created_at: datetime
    updated_at: datetime


class BookPage(BaseModel):
    """One page of the catalogue, the number of matching books (capped) and where the next page starts."""

    items: list[BookOut]
    total: int = Field(
        description="Matching books, counted up to `LIST_TOTAL_CAP`: exact when `total_relation` is `eq`, "
        "a lower bound (the cap) when it is `gte`."
    )
    limit: int
    offset: int
    total_relation: Literal["eq", "gte"] = Field(
        description="`eq`: `total` is the exact number of matches; `gte`: there are at least `total`."
    )
    next_cursor: str | None = Field(
        description="Pass as `cursor` (same filters and sort) for the next page; `null` on the last page. "
        'The same URL is in the `Link` header with `rel="next"`.'
    )


class BookSort(StrEnum):
    """Orderings the list offers; a leading ``-`` sorts descending. Ties are broken by id.

    ``relevance`` (the default when ``q`` is given) puts the best matches of ``q`` first, ties to the oldest book;
    without ``q`` it is the title order.
    """

    RELEVANCE = "relevance"

    TITLE = "title"
    TITLE_DESC = "-title"
    YEAR = "year"
    YEAR_DESC = "-year"
    CREATED = "created_at"
    CREATED_DESC = "-created_at"
    ID = "id"
    ID_DESC = "-id"
