"""Domain events: what changed, published after the transaction that changed it commits.

Services publish; subscribers (the real-time hub, e-mail notifications) are wired by the application factory.
Publishing never fails a request: a subscriber's error is logged and the others still run. Subscribers must
be quick (enqueue and return); anything slow belongs in their own tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from library_api.db.base import utcnow

logger = logging.getLogger("library_api.events")

EventHandler = Callable[["DomainEvent"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """A change worth telling clients about.

    ``topics`` are where it is published (``books``, ``book:42``, ``bookings``); ``owner_id`` names the one
    user a private event concerns (a reader's booking), so delivery can keep it from everyone else.
    """

    type: str
    topics: tuple[str, ...]
    data: dict[str, Any]
    owner_id: int | None = None
    occurred_at: str = field(default_factory=lambda: utcnow().isoformat())


class EventBus:
    """In-process fan-out of domain events to the handlers registered at start-up."""

    def __init__(self) -> None:
        self._handlers: list[EventHandler] = []

    def subscribe(self, handler: EventHandler) -> None:
        """Call ``handler`` for every event published from now on."""
        self._handlers.append(handler)

    async def publish(self, event: DomainEvent) -> None:
        """Hand ``event`` to every handler; a failing handler is logged, never raised to the publisher."""
        for handler in self._handlers:
            try:
                await handler(event)
            except Exception:
                logger.exception("event handler failed for %s", event.type)
