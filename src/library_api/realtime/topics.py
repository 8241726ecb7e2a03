"""Topic names, who may subscribe to which, where domain events go, and the JSON envelope on the wire.

Every message a client receives is ``{"id", "type", "topic", "ts", "data"}``. ``id`` is the message's position
in its topic's stream (1, 2, 3, ... per topic, never reused), so a client that reconnects can say where it
stopped; control replies that belong to no stream (``welcome``, ``subscribed``, ``error``, ``shutdown``, ...)
carry ``"id": null`` and the topic ``system``.

A topic name is what a client subscribes to; a *stream* is where the broker keeps the messages. They are the
same except for ``bookings:me``, which each user resolves to a private stream of their own
(``bookings:user:{id}``): a booking event is only ever written to its owner's stream and to ``bookings``
(librarians), never to a public topic, so a reader cannot receive another reader's booking events whatever
they subscribe to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from library_api.events import DomainEvent
from library_api.security.permissions import Permission
from library_api.security.principal import Principal

CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a ``client_id`` in ``/ws/{client_id}`` may be: 1 to 64 letters, digits, ``_`` or ``-``."""

BOOKS = "books"
BOOKINGS = "bookings"
BOOKINGS_MINE = "bookings:me"
BROADCAST = "broadcast"
HEARTBEAT = "heartbeat"
SYSTEM = "system"

AUTOMATIC_TOPICS = (BROADCAST, HEARTBEAT)
"""Topics every connection starts subscribed to (a client may unsubscribe from them)."""

_BOOK_TOPIC = re.compile(r"book:([1-9][0-9]{0,9})")
_MAX_BOOK_ID = 2**31 - 1


class TopicError(ValueError):
    """A topic that does not exist or that the caller may not subscribe to; the message says which."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic as a client named it and the stream that feeds it."""

    topic: str
    stream: str

    @property
    def replayable(self) -> bool:
        """Whether the broker keeps history for it (heartbeats are per worker and never replayed)."""
        return self.stream != HEARTBEAT


def is_valid_client_id(client_id: str) -> bool:
    """Whether ``client_id`` is an acceptable connection id."""
    return CLIENT_ID_PATTERN.fullmatch(client_id) is not None


def book_topic(topic: str) -> bool:
    """Whether ``topic`` names one book (``book:42``)."""
    match = _BOOK_TOPIC.fullmatch(topic)
    return match is not None and int(match.group(1)) <= _MAX_BOOK_ID


def is_public_topic(topic: str) -> bool:
    """Topics anyone allowed to read the catalogue may follow, and that a broadcast may target."""
    return topic in (BOOKS, BROADCAST) or book_topic(topic)


def private_stream(user_id: int) -> str:
    """The stream behind one user's ``bookings:me``."""
    return f"bookings:user:{user_id}"


def resolve(topic: str, principal: Principal) -> Subscription:
    """The subscription ``principal`` gets for ``topic``, or :class:`TopicError` saying why not."""
    if topic in (BROADCAST, HEARTBEAT):
        return Subscription(topic, topic)
    if topic == BOOKS or book_topic(topic):
        if principal.can(Permission.BOOKS_READ):
            return Subscription(topic, topic)
        raise TopicError(f"subscribing to '{topic}' needs the '{Permission.BOOKS_READ}' permission")
    if topic == BOOKINGS_MINE:
        if principal.user_id is None or not principal.can(Permission.BOOKINGS_READ):
            raise TopicError("'bookings:me' needs a user account with the 'bookings:read' permission")
        return Subscription(topic, private_stream(principal.user_id))
    if topic == BOOKINGS:
        if not principal.can(Permission.BOOKINGS_READ_ANY):
            raise TopicError(f"'bookings' needs the '{Permission.BOOKINGS_READ_ANY}' permission; use 'bookings:me'")
        return Subscription(topic, topic)
    raise TopicError(f"unknown topic '{topic[:80]}'; topics are books, book:<id>, bookings:me, bookings, broadcast")


def routes_for(event: DomainEvent) -> list[Subscription]:
    """The streams a domain event is written to, each with the topic name its subscribers know it by.

    An event that concerns one user (``owner_id`` set) goes to that user's private stream and to the
    librarians' ``bookings`` stream only; public events go to the topics they name.
    """
    if event.owner_id is not None:
        return [Subscription(BOOKINGS, BOOKINGS), Subscription(BOOKINGS_MINE, private_stream(event.owner_id))]
    return [Subscription(topic, topic) for topic in event.topics if is_public_topic(topic)]


def now_iso() -> str:
    """The current UTC time as the envelope's ``ts`` (ISO 8601 with microseconds and ``Z``, like the API's times)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def envelope_tail(message_type: str, topic: str, ts: str, data: Any) -> str:
    """Everything of an envelope after its id: ``,"type":...,"data":...}``.

    The broker prepends ``{"id":N`` once it has numbered the message, so the JSON is encoded once per topic
    and sent as the same text to every subscriber.
    """
    body = orjson.dumps({"type": message_type, "topic": topic, "ts": ts, "data": data}).decode()
    return "," + body[1:]


def with_id(event_id: int | None, tail: str, epoch: str | None = None) -> str:
    """A complete envelope from its id, its stream's epoch (stream messages only) and its tail.

    ``epoch`` is JSON-encoded even though brokers make it of hex digits: it may come back from Redis.
    """
    head = '{"id":' + ("null" if event_id is None else str(event_id))
    if epoch is not None:
        head += ',"epoch":' + orjson.dumps(epoch).decode()
    return head + tail


def control(message_type: str, data: dict[str, Any]) -> str:
    """A control reply outside any stream (``"id": null``, topic ``system``)."""
    return with_id(None, envelope_tail(message_type, SYSTEM, now_iso(), data))
