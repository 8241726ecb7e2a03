"""The ``library-api`` command line: the root commands in :mod:`.main`, each command group in a module of its own."""

from library_api.cli.main import app, main

__all__ = ["app", "main"]
