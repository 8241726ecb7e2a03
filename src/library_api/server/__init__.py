"""Running the application under an ASGI server, chosen by settings and the ``serve`` command."""
