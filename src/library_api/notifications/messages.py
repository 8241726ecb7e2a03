"""The words of each e-mail, rendered once when the mail is queued (later edits of a book do not rewrite it)."""

from __future__ import annotations

from datetime import datetime

from library_api.notifications.models import EmailKind


def _when(moment: datetime) -> str:
    return moment.strftime("%A %d %B %Y, %H:%M UTC")


def render(
    kind: EmailKind, *, name: str, title: str, booking_id: int, start: datetime, end: datetime
) -> tuple[str, str]:
    """Subject and body of a ``kind`` mail about one booking."""
    if kind is EmailKind.BOOKING_CONFIRMATION:
        subject = f"Booking confirmed: {title}"
        opening = f"your booking #{booking_id} of \u201c{title}\u201d is confirmed."
    else:
        subject = f"Reminder: {title} is due back {_when(end)}"
        opening = f"a reminder that your booking #{booking_id} of \u201c{title}\u201d ends soon."
    body = (
        f"Hello {name},\n\n"
        f"{opening}\n\n"
        f"  From:  {_when(start)}\n"
        f"  Until: {_when(end)}\n\n"
        "You can see or cancel your bookings in your account.\n\n"
        "-- \nThe library\n"
    )
    return subject[:200], body
