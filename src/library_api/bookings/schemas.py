"""Request and response bodies for bookings."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from library_api.holdings.models import BookingStatus
from library_api.http.fields import WholeNumber


class BookingCreate(BaseModel):
    """A request for one copy of a book over ``[start, end)``; both instants carry a time zone."""

    model_config = ConfigDict(extra="forbid")

    book_id: WholeNumber = Field(ge=1, le=2**31 - 1)
    start: AwareDatetime
    end: AwareDatetime


class BookingOut(BaseModel):
    """A booking as its owner and librarians see it."""

    id: int
    book_id: int
    user_id: int
    start: datetime
    end: datetime
    status: BookingStatus
    created_at: datetime
    closed_at: datetime | None


class BookingPage(BaseModel):
    """One page of bookings, the number matching (capped) and where the next page starts."""

    items: list[BookingOut]
    total: int = Field(
        description="Matching bookings, counted up to `LIST_TOTAL_CAP`: exact when `total_relation` is `eq`, "
        "a lower bound (the cap) when it is `gte`."
    )
    limit: int
    offset: int
    total_relation: Literal["eq", "gte"] = Field(
        description="`eq`: `total` is the exact number of matches; `gte`: there are at least `total`."
    )
    next_cursor: str | None = Field(
        description="Pass as `cursor` (same filters) for the next page; `null` on the last page. The same URL "
        'is in the `Link` header with `rel="next"`.'
    )
