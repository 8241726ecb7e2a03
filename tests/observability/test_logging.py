"""Log formats: one JSON object per line with the request id, or readable console lines."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from library_api.observability.logging import (
    ACCESS_LOGGER,
    MASK,
    ConsoleFormatter,
    JsonFormatter,
    RedactingFilter,
    configure_logging,
    redact,
    request_id_var,
)


def record(message: str, **extra: object) -> logging.LogRecord:
    entry = logging.makeLogRecord({"name": "library_api.test", "levelname": "INFO", "levelno": 20, "msg": message})
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


def test_json_lines_carry_request_id_extras_and_exceptions() -> None:
    token = request_id_var.set("req-123")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            entry = record("hello %s", user_id=7)
            entry.args = ("world",)
            entry.exc_info = sys.exc_info()
        line = JsonFormatter().format(entry)
    finally:
        request_id_var.reset(token)
    data = json.loads(line)
    assert data["message"] == "hello world"
    assert data["request_id"] == "req-123"
    assert data["user_id"] == 7
    assert data["level"] == "info"
    assert "ValueError: boom" in data["exception"]
    assert "\n" not in line


def test_console_lines_show_the_request_id_only_inside_requests() -> None:
    formatter = ConsoleFormatter()
    assert "[" not in formatter.format(record("outside"))
    token = request_id_var.set("abc")
    try:
        assert "library_api.test [abc] inside" in formatter.format(record("inside"))
    finally:
        request_id_var.reset(token)


def test_configure_logging_routes_server_loggers_through_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", "json")
        logging.getLogger("uvicorn.error").info("server says hi")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert json.loads(line)["logger"] == "uvicorn.error"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "c2lnbmF0dXJl"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.AbCdEfGh issued", "AbCdEfGh"),
        ("login with password=hunter2&username=a@b.c", "hunter2"),
        ('{"password": "s3cret pass", "email": "a@b.c"}', "s3cret"),
        ("{'refresh_token': 'rt-12345678'}", "rt-12345678"),
        ("connecting to postgresql+asyncpg://app:dbpass123@db:5432/library", "dbpass123"),
        ("redis://:redispass@cache:6379/0 unreachable", "redispass"),
        ("X-API-Key: lib_abcdef0123456789", "lib_abcdef0123456789"),
        ("SENTRY_DSN=https://key@o1.ingest.sentry.io/2", "key@o1"),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked
    assert MASK in masked


def test_ordinary_text_is_left_alone() -> None:
    for text in ("GET /api/v1/books/12 200 1.20ms", "book 'Clean Code' updated", "tokens issued: 3"):
        assert redact(text) == text


def test_the_filter_masks_arguments_extras_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(frozenset({ACCESS_LOGGER})))
    logger = logging.getLogger("library_api.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("connecting to %s", "postgresql://u:pw-in-arg@h/db", extra={"dsn": "redis://:pw-in-extra@h"})
        try:
            raise RuntimeError("failed with password=pw-in-traceback")
        except RuntimeError:
            logger.exception("failure")
        logging.getLogger(ACCESS_LOGGER).addHandler(handler)
    finally:
        logger.removeHandler(handler)
        logging.getLogger(ACCESS_LOGGER).removeHandler(handler)
    text = stream.getvalue()
    assert "pw-in-arg" not in text
    assert "pw-in-extra" not in text
    assert "pw-in-traceback" not in text
    assert text.count("\n") == 2


def test_console_tracebacks_are_masked_too() -> None:
    try:
        raise RuntimeError("Bearer abcdefghijklmnop")
    except RuntimeError:
        entry = record("failed")
        entry.exc_info = sys.exc_info()
    assert "abcdefghijklmnop" not in ConsoleFormatter().format(entry)
