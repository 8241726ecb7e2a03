"""Every model module imported in one place, so that the metadata Alembic compares against is complete."""

from library_api.auth.models import PasswordReset, RefreshFamily, RefreshToken
from library_api.bookings.models import Booking
from library_api.books.models import Book, BookAuthor, BookTag
from library_api.db.base import Base
from library_api.idempotency.models import IdempotencyRecord
from library_api.notifications.models import OutboxEmail
from library_api.realtime.models import LiveEventRow
from library_api.tokens.models import ApiToken
from library_api.users.models import User

metadata = Base.metadata

__all__ = [
    "ApiToken",
    "Book",
    "BookAuthor",
    "BookTag",
    "Booking",
    "IdempotencyRecord",
    "LiveEventRow",
    "OutboxEmail",
    "PasswordReset",
    "RefreshFamily",
    "RefreshToken",
    "User",
    "metadata",
]
