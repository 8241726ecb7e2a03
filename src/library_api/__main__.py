"""``python -m library_api``: the same command line as ``library-api``."""

from library_api.cli import main

main()
