"""``WS_MAX_SIZE`` reaches every server, and the Hypercorn adapter makes it hold (buffer bound, no unasked deflate)."""

from __future__ import annotations

import logging

import pytest
from hypercorn.protocol import ws_stream
from wsproto.events import BytesMessage, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake

from library_api.server import hypercorn_ws
from library_api.server.hypercorn import hypercorn_config
from library_api.server.hypercorn_ws import BoundedBuffer, DeclinedDeflate, install
from library_api.server.uvicorn import uvicorn_options
from tests.conftest import fast_settings
from tests.support.logs import captured_log


def test_every_server_is_given_the_same_message_limit() -> None:
    settings = fast_settings(ws_max_size=32 * 1024)
    assert fast_settings().ws_max_size == 64 * 1024
    assert uvicorn_options(settings, None)["ws_max_size"] == 32 * 1024
    assert hypercorn_config(settings).websocket_max_message_size == 32 * 1024


def test_the_bounded_buffer_refuses_before_storing_and_everything_after() -> None:
    buffer = BoundedBuffer(10)
    buffer.extend(TextMessage(data="12345", message_finished=False))
    with pytest.raises(ws_stream.FrameTooLargeError):
        buffer.extend(TextMessage(data="x" * 1_000_000, message_finished=False))
    assert buffer.value is None  # nothing of the oversized chunk (nor what came before it) is kept
    with pytest.raises(ws_stream.FrameTooLargeError):
        buffer.extend(TextMessage(data="y", message_finished=True))
    assert buffer.value is None


def test_the_bounded_buffer_passes_messages_within_the_limit() -> None:
    buffer = BoundedBuffer(10)
    buffer.extend(BytesMessage(data=b"0123456789", message_finished=True))
    assert buffer.to_message() == {"type": "websocket.receive", "bytes": b"0123456789", "text": None}


def test_declined_deflate_is_left_out_of_the_handshake() -> None:
    offer = ["permessage-deflate; client_max_window_bits"]
    assert server_extensions_handshake(offer, [DeclinedDeflate()]) is None
    assert server_extensions_handshake(offer, [PerMessageDeflate()]) is not None


@pytest.fixture
def hypercorn_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test installs into Hypercorn's module is undone afterwards."""
    monkeypatch.setattr(ws_stream, "WebsocketBuffer", ws_stream.WebsocketBuffer)
    monkeypatch.setitem(vars(ws_stream), "PerMessageDeflate", vars(ws_stream)["PerMessageDeflate"])


@pytest.mark.usefixtures("hypercorn_names")
def test_install_bounds_the_buffer_and_follows_the_deflate_setting() -> None:
    assert install(fast_settings())
    assert ws_stream.WebsocketBuffer is BoundedBuffer
    assert vars(ws_stream)["PerMessageDeflate"] is DeclinedDeflate
    assert install(fast_settings(ws_per_message_deflate=True))
    assert vars(ws_stream)["PerMessageDeflate"] is PerMessageDeflate


@pytest.mark.usefixtures("hypercorn_names")
def test_an_unknown_hypercorn_is_left_alone_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ws_stream.WebsocketBuffer
    monkeypatch.setattr(hypercorn_ws, "version", lambda _name: "0.19.0")
    with captured_log(logging.WARNING) as log:
        assert not install(fast_settings())
    assert ws_stream.WebsocketBuffer is original
    [warning] = log.records("library_api.server")
    assert "Hypercorn 0.19.0 is not a version this service adapts" in warning["message"]
