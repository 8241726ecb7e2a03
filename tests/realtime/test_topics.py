"""Topic names, permissions per topic, where domain events are routed, and the envelope's shape."""

from __future__ import annotations

import orjson
import pytest

from library_api.events import DomainEvent
from library_api.realtime.topics import (
    Subscription,
    TopicError,
    control,
    envelope_tail,
    is_valid_client_id,
    resolve,
    routes_for,
    with_id,
)
from library_api.security.permissions import PermissionPolicy
from library_api.security.principal import CredentialKind, Principal

POLICY = PermissionPolicy.from_overrides({})


def principal(role: str, user_id: int | None = 7) -> Principal:
    roles = frozenset({role})
    kind = CredentialKind.ANONYMOUS if role == "anonymous" else CredentialKind.ACCESS_TOKEN
    return Principal(
        subject=f"user:{user_id}",
        credential=kind,
        roles=roles,
        permissions=POLICY.permissions_for(roles),
        user_id=user_id,
    )


@pytest.mark.parametrize("client_id", ["a", "A-b_9", "x" * 64])
def test_valid_client_ids(client_id: str) -> None:
    assert is_valid_client_id(client_id)


@pytest.mark.parametrize("client_id", ["", "x" * 65, "a b", "a/b", "é", "a.b", "a\n"])
def test_invalid_client_ids(client_id: str) -> None:
    assert not is_valid_client_id(client_id)


def test_bookings_me_is_the_users_private_stream() -> None:
    assert resolve("bookings:me", principal("reader", 7)) == Subscription("bookings:me", "bookings:user:7")
    assert resolve("bookings:me", principal("reader", 8)).stream == "bookings:user:8"


def test_catalogue_topics_need_books_read() -> None:
    assert resolve("books", principal("reader")).stream == "books"
    assert resolve("book:42", principal("anonymous", None)).stream == "book:42"
    nobody = Principal(subject="x", credential=CredentialKind.CERTIFICATE, roles=frozenset(), permissions=frozenset())
    with pytest.raises(TopicError, match="books:read"):
        resolve("books", nobody)


@pytest.mark.parametrize(
    ("topic", "role", "message"),
    [
        ("bookings", "reader", "bookings:read:any"),
        ("bookings:me", "anonymous", "user account"),
        ("bookings:user:7", "reader", "unknown topic"),
        ("book:0", "reader", "unknown topic"),
        ("book:2147483648", "reader", "unknown topic"),
        ("book:-1", "reader", "unknown topic"),
        ("nope", "admin", "unknown topic"),
    ],
)
def test_refused_topics_say_why(topic: str, role: str, message: str) -> None:
    with pytest.raises(TopicError, match=message):
        resolve(topic, principal(role, None if role == "anonymous" else 7))


def test_librarians_may_follow_every_booking() -> None:
    assert resolve("bookings", principal("librarian")).stream == "bookings"


def test_booking_events_go_only_to_the_owner_and_to_librarians() -> None:
    event = DomainEvent(type="booking.created", topics=("bookings", "book:3"), data={}, owner_id=5)
    assert routes_for(event) == [Subscription("bookings", "bookings"), Subscription("bookings:me", "bookings:user:5")]


def test_catalogue_events_go_to_their_public_topics() -> None:
    event = DomainEvent(type="book.updated", topics=("books", "book:3", "internal"), data={})
    assert [route.stream for route in routes_for(event)] == ["books", "book:3"]


def test_envelope_has_the_documented_fields_in_order() -> None:
    text = with_id(12, envelope_tail("book.created", "books", "2026-01-01T00:00:00Z", {"id": 1}))
    assert list(orjson.loads(text)) == ["id", "type", "topic", "ts", "data"]
    assert orjson.loads(text)["id"] == 12
    reply = orjson.loads(control("pong", {"a": 1}))
    assert reply["id"] is None
    assert reply["topic"] == "system"
    assert reply["ts"].endswith("Z")
