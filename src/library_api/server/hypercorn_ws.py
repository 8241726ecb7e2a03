"""Hypercorn's WebSocket message limit, made to hold: a bounded message buffer, and compression only when asked for.

Hypercorn 0.18 (with wsproto 1.x) checks ``websocket_max_message_size`` after the fact: its message buffer stores
a received chunk before comparing the total with the limit, and after it has sent close 1009 it goes on storing
whatever the client keeps sending, so a client that ignores the close makes the server buffer a whole frame,
however large (measured: 16 sockets sending 8 MB frames each grew a worker by 124 MiB). It also accepts
permessage-deflate from every client that offers it, whatever ``WS_PER_MESSAGE_DEFLATE`` says, and wsproto inflates
each received chunk without a limit (one 64 KiB read can become some 64 MiB).

This module is the only one that touches Hypercorn's internals. :func:`install` replaces two names that
``hypercorn.protocol.ws_stream.WSStream`` looks up for every connection:

* ``WebsocketBuffer`` by :class:`BoundedBuffer`, which refuses a chunk that would take a message over the limit
  before storing it, and every chunk after it (the connection is closing with 1009);
* ``PerMessageDeflate`` by :class:`DeclinedDeflate`, which declines every offer, unless ``WS_PER_MESSAGE_DEFLATE``
  is on (then Hypercorn's own is kept, and a compressed chunk may inflate as above before it is refused).

It does so only for the Hypercorn versions it was written against (:data:`SUPPORTED`); under any other it logs a
warning and changes nothing.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Any

from hypercorn.protocol import ws_stream
from wsproto.events import Message
from wsproto.extensions import PerMessageDeflate

from library_api.config import Settings

logger = logging.getLogger("library_api.server")

SUPPORTED = ("0.18.",)
"""Hypercorn versions whose ``ws_stream`` module this adapter knows (prefixes of the version string)."""


class BoundedBuffer(ws_stream.WebsocketBuffer):
    """Hypercorn's message buffer, refusing what would exceed the limit before it is stored, and all that follows."""

    def extend(self, event: Message[Any]) -> None:
        """Store one received chunk, or raise ``FrameTooLargeError`` (Hypercorn then closes with 1009)."""
        if self.length + len(event.data) > self.max_length:
            self.value = None
            self.length = self.max_length + 1  # every later chunk of this connection is refused as well
            raise ws_stream.FrameTooLargeError
        super().extend(event)


class DeclinedDeflate(PerMessageDeflate):
    """permessage-deflate that is never agreed: the client's offer is declined and messages stay uncompressed."""

    def accept(self, offer: str) -> None:
        """Decline the offer (wsproto then leaves the extension out of the handshake and of the connection)."""


def install(settings: Settings) -> bool:
    """Bound Hypercorn's WebSocket messages for this process; ``False`` (with a warning) on an unknown version."""
    installed = version("hypercorn")
    if not installed.startswith(SUPPORTED):
        logger.warning(
            "Hypercorn %s is not a version this service adapts (%s): WebSocket messages rely on Hypercorn's own "
            "limit, which a client ignoring close 1009 can overrun; use Uvicorn or Gunicorn where clients are "
            "untrusted",
            installed,
            ", ".join(f"{prefix}x" for prefix in SUPPORTED),
        )
        return False
    names = vars(ws_stream)  # the module's globals, which WSStream and Handshake read when they need the classes
    names["WebsocketBuffer"] = BoundedBuffer
    names["PerMessageDeflate"] = PerMessageDeflate if settings.ws_per_message_deflate else DeclinedDeflate
    return True
