"""The live console: an HTML page served at ``/`` with its own script and style sheet (no inline code)."""
