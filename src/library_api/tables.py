"""Every table of the service, gathered for Alembic: the metadata that migrations are compared against.

It sits above the domains (like the factory) so that `db` stays below them: `db/migrations/env.py` reads this
registry only by the name `alembic.ini` gives it (`target_metadata`), for `alembic revision --autogenerate`, and the
migration tests import it; the service itself never does (an upgrade runs the scripts, not a comparison).
"""

from library_api.auth.models import PasswordReset, RefreshFamily, RefreshToken
from library_api.books.models import Book, BookAuthor, BookTag
from library_api.db.base import Base
from library_api.holdings.models import Booking
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
