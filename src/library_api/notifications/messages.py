"""The words of each e-mail, rendered once when the mail is queued (later edits of a book do not rewrite it)."""

from __future__ import annotations

import re
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


RESET_TOKEN = re.compile(r"#token=[A-Za-z0-9_-]+")
"""Where a password-reset mail carries its token: the fragment of its link."""

REDACTED = "#token=(removed-from-the-outbox-once-sent)"


def render_password_reset(*, name: str, link: str, minutes: int) -> tuple[str, str]:
    """Subject and body of the mail that carries a password-reset link (the link's fragment holds the token)."""
    body = (
        f"Hello {name},\n\n"
        "someone asked to reset the password of your library account. To choose a new password, open\n\n"
        f"  {link}\n\n"
        f"The link works once, within {minutes} minutes, and only until a newer one is asked for. Using it signs\n"
        "you out everywhere. If you did not ask for it, ignore this mail: your password stays as it is.\n\n"
        "-- \nThe library\n"
    )
    return "Reset your library password", body


def redact_reset_token(body: str) -> str:
    """``body`` with a password-reset token replaced: what the outbox keeps once the mail is sent."""
    return RESET_TOKEN.sub(REDACTED, body)
