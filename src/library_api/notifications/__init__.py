"""E-mail notifications from domain events: booking confirmations and reminders before a booking ends.

Mails go through a database outbox (``email_outbox``), so a mail is neither lost when the process stops nor
sent twice when several workers run: the row is the promise, its unique ``(kind, booking_id)`` the guard.
Off unless ``SMTP_HOST`` is configured.
"""
