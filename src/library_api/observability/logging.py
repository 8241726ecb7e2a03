"""Log set-up: one JSON object per line in production, readable lines in development.

Every line carries the request id of the request it was written for (see :data:`request_id_var`), so the lines
of one request can be found together whichever component wrote them. Every line also passes
:class:`RedactingFilter` on its way out, which masks bearer tokens, JWTs, passwords, refresh tokens and
credentials in URLs wherever they appear (a message, an argument, an extra field or a traceback), so that a
secret handed to a logger by mistake still never reaches the log.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

ACCESS_LOGGER = "library_api.access"
"""The logger of the one line written per request (see :mod:`library_api.http.telemetry`)."""

request_id_var: ContextVar[str | None] = ContextVar("library_api_request_id", default=None)
"""The id of the request being served in the current task, or ``None`` outside requests."""

_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "rid"}

MASK = "***"

_SECRET_PATTERNS = (
    # Authorization header values and bearer tokens anywhere in a text
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + MASK),
    # JSON Web Tokens (three base64url parts, the first two starting with '{"')
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MASK),
    # key=value, key: value and "key": "value" for keys that name secrets
    (
        re.compile(
            r"""(?i)(["']?\b(?:password|passwd|pwd|secret|secret_key|token|access_token|refresh_token|api_key|"""
            r"""apikey|x-api-key|authorization|client_secret|sentry_dsn)\b["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,&;)}\]]+)"""
        ),
        r"\1" + MASK,
    ),
    # credentials inside URLs: scheme://user:password@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@", re.IGNORECASE), r"\1" + MASK + "@"),
)


def redact(text: str) -> str:
    """``text`` with every secret-looking value masked."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, arguments and string extras before any handler formats it.

    The message is rendered once here (arguments merged in) and the record's arguments cleared, so handlers
    print exactly the redacted text. Tracebacks are redacted by the formatters (they are rendered later).
    Records of the access logger, built only from fields chosen not to carry secrets, skip the scan.
    """

    def __init__(self, trusted_loggers: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self._trusted = trusted_loggers

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops a record."""
        if record.name in self._trusted:
            return True
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        for key, value in record.__dict__.items():
            if isinstance(value, str) and key not in _STANDARD_ATTRIBUTES:
                record.__dict__[key] = redact(value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request id, extras and any exception."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def timestamp(self, created: float) -> str:
        """ISO 8601 UTC with milliseconds; the date and time of day are formatted once per second."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single JSON line."""
        entry: dict[str, Any] = {
            "ts": self.timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        attributes = record.__dict__
        for key in attributes.keys() - _STANDARD_ATTRIBUTES:
            if not key.startswith("_"):
                entry[key] = attributes[key]
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """``time level logger [request id] message`` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(rid)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` with the request id, when there is one, after the logger name."""
        request_id = request_id_var.get()
        record.rid = f" [{request_id}]" if request_id else ""
        return super().format(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - the logging API's name
        """The traceback, with secrets masked."""
        return redact(super().formatException(ei))


def configure_logging(level: str, fmt: Literal["json", "console"]) -> None:
    """Send every log record (the service's, Uvicorn's, Gunicorn's) to stderr in the chosen format."""
    # Per the logging HOWTO's optimisation advice: no caller lookup and no thread or multiprocessing names,
    # which no line of ours prints and which cost more than formatting the access line itself.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(RedactingFilter(trusted_loggers=frozenset({ACCESS_LOGGER})))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "hypercorn.error", "hypercorn.access", "gunicorn.error"):
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
