"""The SMTP and application fixtures of ``test_email``, shared with the other modules of this package."""

from tests.notifications.test_email import smtp, start_app, tls

__all__ = ["smtp", "start_app", "tls"]
