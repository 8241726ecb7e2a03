"""The ``library-api`` command line: serve, migrate, seed, users, check-config."""

from library_api.cli.main import app, main

__all__ = ["app", "main"]
