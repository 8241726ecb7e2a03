"""The record of refused handshakes: reasons as OpenSSL gives them, a bounded log, every refusal counted."""

from __future__ import annotations

import logging
import ssl

import pytest
from prometheus_client import CollectorRegistry, Counter

from library_api.server.handshakes import HandshakeFailures, peer_text, refusal_reason


def verify_error(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_message = message
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    return error


def ssl_error(reason: str | None) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] ...")
    error.reason = reason
    return error


def test_reasons_are_openssl_s_words() -> None:
    assert refusal_reason(verify_error("certificate has expired")) == "certificate has expired"
    assert refusal_reason(ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE")) == "peer did not return a certificate"
    assert refusal_reason(ssl_error(None)) == "tls error"
    assert refusal_reason(TimeoutError()) == "handshake timeout"
    assert refusal_reason(ConnectionAbortedError("SSL handshake is taking longer")) == "handshake timeout"
    assert refusal_reason(ConnectionResetError()) == "connection lost during handshake"


def test_peers_are_written_as_addresses() -> None:
    assert peer_text(("127.0.0.1", 5000)) == "127.0.0.1:5000"
    assert peer_text(("::1", 5000, 0, 0)) == "[::1]:5000"
    assert peer_text(None) == "unknown"
    assert peer_text("/run/socket") == "/run/socket"


def test_the_log_is_bounded_per_window_and_says_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    counter = Counter("tls_handshake_failures", "test", ["reason"], registry=registry)
    now = [0.0]
    failures = HandshakeFailures(counter, limit=2, window=60.0, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="library_api.tls")
    for port in range(5):
        failures.refused(verify_error("certificate has expired"), ("127.0.0.1", port))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert [line.split(" refused")[0] for line in warnings] == [
        "TLS handshake from 127.0.0.1:0",
        "TLS handshake from 127.0.0.1:1",
    ]
    assert failures.suppressed == 3
    now[0] = 60.0
    failures.refused(verify_error("certificate has expired"), ("127.0.0.1", 9))
    last = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING][-1]
    assert last.startswith("TLS handshake from 127.0.0.1:9 refused: certificate has expired")
    assert last.endswith("; 3 more refused handshake(s) were not logged")
    failures.refused(ConnectionResetError(), ("127.0.0.1", 10))
    total = "tls_handshake_failures_total"
    assert registry.get_sample_value(total, {"reason": "certificate has expired"}) == 6
    assert registry.get_sample_value(total, {"reason": "connection lost during handshake"}) == 1
    assert not any("127.0.0.1:10" in record.getMessage() for record in caplog.records if record.levelno > logging.DEBUG)
