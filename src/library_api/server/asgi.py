"""Import targets for ASGI servers that start the application themselves (several workers, reload).

Worker processes rebuild the settings exactly as the parent did: from the environment, ``.env``, the config
file, and the parent's command-line flags handed down in ``LIBRARY_API_OVERRIDES``.
"""

from __future__ import annotations

from fastapi import FastAPI

from library_api.app import create_app
from library_api.config import load_settings
from library_api.observability.logging import configure_logging


def create_app_from_environment() -> FastAPI:
    """The application as configured for this process; the import target handed to servers that spawn workers."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.effective_log_format)
    return create_app(settings)
