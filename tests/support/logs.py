"""Capturing log lines exactly as the service writes them (JSON formatter and redaction filter)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from library_api.observability.logging import ACCESS_LOGGER, JsonFormatter, RedactingFilter


class CapturedLog:
    """The JSON lines written while capturing."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def text(self) -> str:
        return self._stream.getvalue()

    def records(self, logger: str | None = None) -> list[dict[str, Any]]:
        entries = [json.loads(line) for line in self.text.splitlines() if line]
        return [entry for entry in entries if logger is None or entry["logger"] == logger]

    def access(self) -> list[dict[str, Any]]:
        return self.records(ACCESS_LOGGER)


@contextmanager
def captured_log(level: int = logging.DEBUG) -> Iterator[CapturedLog]:
    """Send every record to an in-memory JSON stream (as ``configure_logging`` does to stderr)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(trusted_loggers=frozenset({ACCESS_LOGGER})))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield CapturedLog(stream)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
