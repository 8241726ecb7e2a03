"""A stream's fan-out: subscribers in step get each message once, checked once for all of them, and those on their
own (new, replaying, ahead, resynchronised) are checked one by one until they stand where the others stand."""

from __future__ import annotations

import json

from library_api.realtime.connection import Connection, StreamPosition
from library_api.realtime.fanout import Fanout
from tests.realtime.test_connection import Owner, Peer, connected
from tests.support.polling import wait_until


async def subscriber(fanout: Fanout, owner: Owner) -> tuple[Peer, Connection, StreamPosition]:
    """A connection subscribed to the stream of ``fanout``, with the peer that sees what it is sent."""
    peer = Peer()
    connection = await connected(peer, owner)
    position = StreamPosition(connection, "books")
    connection.streams["books"] = position
    connection.topics["books"] = "books"
    fanout.add(position)
    return peer, connection, position


def kinds(peer: Peer) -> list[str]:
    """What a peer received: the message texts, control messages by their type."""
    return [text if not text.startswith("{") else json.loads(text)["type"] for text in peer.sent]


async def test_new_subscribers_join_those_in_step_with_their_first_message_and_get_each_message_once() -> None:
    fanout, owner = Fanout(), Owner()
    first, first_connection, _ = await subscriber(fanout, owner)
    second, second_connection, _ = await subscriber(fanout, owner)
    assert (len(fanout.in_step), len(fanout.on_their_own), len(fanout)) == (0, 2, 2)
    fanout.deliver("e1", 1, "one")
    assert set(fanout.in_step) == {first_connection, second_connection}
    assert (fanout.epoch, fanout.last_id) == ("e1", 1)
    fanout.deliver("e1", 2, "two")
    fanout.deliver("e1", 2, "two again")  # the same id twice: taken once
    fanout.deliver("e1", 1, "one again")  # an older id: not sent
    assert first.sent == second.sent == ["one", "two"]
    assert owner.messages_sent == 4


async def test_a_replaying_subscriber_stays_on_its_own_until_its_history_is_out_and_it_stands_with_the_others() -> None:
    fanout, owner = Fanout(), Owner()
    steady, _, _ = await subscriber(fanout, owner)
    fanout.deliver("e1", 1, "one")
    late, late_connection, position = await subscriber(fanout, owner)
    position.held = []
    fanout.deliver("e1", 2, "two")
    assert position.held == [("e1", 2, "two")]
    assert late_connection in fanout.on_their_own
    position.held = None  # the history is out: its position names where it ends
    position.last_id, position.epoch = 2, "e1"
    fanout.deliver("e1", 3, "three")
    assert late_connection in fanout.in_step
    assert steady.sent == ["one", "two", "three"]
    assert late.sent == ["three"]


async def test_a_subscriber_resumed_ahead_of_this_worker_skips_what_it_had_and_joins_when_the_others_catch_up() -> None:
    fanout, owner = Fanout(), Owner()
    steady, _, _ = await subscriber(fanout, owner)
    fanout.deliver("e1", 1, "one")
    ahead, ahead_connection, position = await subscriber(fanout, owner)
    position.last_id, position.epoch = 3, "e1"  # replayed up to 3 from history this worker has not delivered yet
    fanout.deliver("e1", 2, "two")
    fanout.deliver("e1", 3, "three")
    assert ahead.sent == []
    assert ahead_connection in fanout.in_step
    fanout.deliver("e1", 4, "four")
    assert steady.sent == ["one", "two", "three", "four"]
    assert ahead.sent == ["four"]


async def test_a_new_numbering_sends_those_in_step_a_resync_before_its_first_message() -> None:
    fanout, owner = Fanout(), Owner()
    first, _, _ = await subscriber(fanout, owner)
    second, _, _ = await subscriber(fanout, owner)
    fanout.deliver("e1", 7, "seven")
    fanout.deliver("e2", 1, "one of the new numbering")
    fanout.deliver("e2", 2, "two of the new numbering")
    assert kinds(first) == kinds(second) == ["seven", "resync", "one of the new numbering", "two of the new numbering"]
    assert json.loads(first.sent[1])["data"]["epoch"] == "e2"
    assert owner.resyncs == 2
    assert (fanout.epoch, fanout.last_id, len(fanout.in_step)) == ("e2", 2, 2)


async def test_detaching_brings_a_position_up_to_date_and_it_follows_its_own_place_from_then_on() -> None:
    fanout, owner = Fanout(), Owner()
    peer, connection, position = await subscriber(fanout, owner)
    fanout.deliver("e1", 5, "five")
    assert fanout.detach(connection) is position
    assert (position.last_id, position.epoch) == (5, "e1")
    assert fanout.detach(connection) is position  # already on its own: the same position, unchanged
    position.last_id, position.epoch = 0, None  # told to resynchronise: any id counts again
    fanout.deliver("e1", 3, "three")
    assert peer.sent == ["five", "three"]
    assert connection in fanout.in_step
    fanout.remove(connection)
    assert fanout.detach(connection) is None
    assert len(fanout) == 0


async def test_subscribers_in_step_that_are_busy_or_closed_are_queued_for_or_skipped() -> None:
    fanout, owner = Fanout(), Owner()
    busy, busy_connection, _ = await subscriber(fanout, owner)
    closed, closed_connection, _ = await subscriber(fanout, owner)
    fanout.deliver("e1", 1, "one")
    busy.gate.clear()
    fanout.deliver("e1", 2, "two")  # its send waits: a writer carries it on
    fanout.deliver("e1", 3, "three")  # queued behind it
    assert list(busy_connection.pending or ()) == ["three"]
    closed_connection.closed = True
    fanout.deliver("e1", 4, "four")
    busy.gate.set()
    await wait_until(lambda: busy_connection.writer is None, within=5, what="the writer to empty the queue")
    assert busy.sent == ["one", "two", "three", "four"]
    assert closed.sent == ["one", "two", "three"]
