"""The live event outbox: the events of a change, written in the transaction that makes the change.

A service that changes the catalogue or a booking calls :func:`record` before it commits: one ``INSERT`` of one
row per event (several events of one transaction go in one statement), in the same transaction, so the events
exist exactly when the change does — never for a change that rolled back, and not lost with a worker's memory
when Redis is down or the worker dies. The relay (:mod:`library_api.realtime.relay`) publishes the rows to the
broker and deletes them once the broker has accepted them.

Each row carries what publishing needs and nothing to recompute: the message type, the routes (topic and stream
pairs, from :func:`~library_api.realtime.topics.routes_for`) and the payload as JSON, plus a random ``key`` that
the broker uses to recognise a row it has already published (a relay that died between publishing and
deleting), so that the retry is not numbered a second time.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.db.base import utcnow
from library_api.events import DomainEvent
from library_api.realtime.models import LiveEventRow
from library_api.realtime.topics import Subscription, routes_for


def row_values(event: DomainEvent, now: datetime) -> dict[str, Any] | None:
    """The outbox row of ``event``, or ``None`` when it goes to no live topic."""
    routes = routes_for(event)
    if not routes:
        return None
    return {
        "key": uuid.uuid4().hex,
        "type": event.type,
        "routes": orjson.dumps([[route.topic, route.stream] for route in routes]).decode(),
        "data": orjson.dumps(event.data).decode(),
        "created_at": now,
    }


async def record(session: AsyncSession, events: Sequence[DomainEvent]) -> None:
    """Write the live events of the transaction ``session`` is in (one statement; nothing for no live event)."""
    now = utcnow()
    values = [row for row in (row_values(event, now) for event in events) if row is not None]
    if values:
        await session.execute(insert(LiveEventRow), values)


def decode_routes(text: str) -> list[Subscription]:
    """The routes stored in a row."""
    return [Subscription(str(topic), str(stream)) for topic, stream in orjson.loads(text)]
