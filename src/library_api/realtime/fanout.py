"""How a message of one stream reaches this worker's subscribers: most of them in step, a few on their own.

Every subscription has a position (:class:`~library_api.realtime.connection.StreamPosition`: the id of the last
message queued and the epoch of its numbering), checked for each message so that nothing is sent twice and a
restarted numbering is noticed. But almost every subscriber of a stream stands at the same place: it took the
stream's previous message. So a :class:`Fanout` keeps those **in step** and checks a message once for all of
them, against the place they share; a broadcast then touches nothing per subscriber but its connection, as a
bare loop of sends does (at 10,000 connections, looking up each subscriber's own position was most of what the
service's fan-out cost beyond such a loop: ``docs/benchmarks.md``).

The others follow **their own** position, checked message by message as before: a subscription just made (its
epoch not yet named), one replaying history (it holds live messages back), one resumed ahead of what this worker
has delivered (a Redis reader lagging behind the history it was replayed from), one told to resynchronise. Each
joins those in step once it stands where they stand. The positions of subscribers in step are not updated one by
one (that would touch each of them for every message, the very cost avoided): :meth:`Fanout.detach` brings one
up to date when it has to act on its own again.
"""

from __future__ import annotations

from library_api.realtime.connection import Connection, StreamPosition


class Fanout:
    """The local subscribers of one stream, and the place those in step share (never awaits)."""

    __slots__ = ("epoch", "in_step", "last_id", "on_their_own")

    def __init__(self) -> None:
        self.in_step: dict[Connection, StreamPosition] = {}
        """Subscribers standing at (``epoch``, ``last_id``); the fields of their positions are out of date."""
        self.on_their_own: dict[Connection, StreamPosition] = {}
        """Subscribers following their own position, in subscription order."""
        self.epoch: str | None = None
        """The epoch of the numbering those in step follow (``None`` while no message has named one)."""
        self.last_id = 0
        """Id of the last message queued for those in step."""

    def __len__(self) -> int:
        """How many connections subscribe to the stream on this worker."""
        return len(self.in_step) + len(self.on_their_own)

    def add(self, position: StreamPosition) -> None:
        """A new subscription: it follows its own position until it stands where those in step stand."""
        self.in_step.pop(position.connection, None)
        self.on_their_own[position.connection] = position

    def remove(self, connection: Connection) -> None:
        """The connection no longer subscribes to the stream."""
        self.in_step.pop(connection, None)
        self.on_their_own.pop(connection, None)

    def detach(self, connection: Connection) -> StreamPosition | None:
        """The subscriber's position, brought up to date and followed on its own from now on (it may rejoin)."""
        position = self.in_step.pop(connection, None)
        if position is None:
            return self.on_their_own.get(connection)
        position.last_id, position.epoch = self.last_id, self.epoch
        self.on_their_own[connection] = position
        return position

    def deliver(self, epoch: str | None, event_id: int, text: str) -> None:
        """Queue the message for every subscriber that has not had it."""
        in_step = self.in_step
        if in_step:
            if epoch is not None and epoch != self.epoch:
                # The stream's numbering changed: each position notices it on its own (a ``resync`` or, for a
                # numbering not named before, nothing) as the message reaches it below.
                for connection in list(in_step):
                    self.detach(connection)
            elif event_id > self.last_id:
                self.last_id = event_id
                for connection in list(in_step):  # Connection.offer, its common case inlined: a call less each
                    if connection.writer is None and not connection.closed:
                        connection.send_now(text)
                    else:
                        connection.offer(text)
        on_their_own = self.on_their_own
        if on_their_own:
            for position in list(on_their_own.values()):
                position.offer(epoch, event_id, text)
            self._rejoin(epoch, event_id)

    def _rejoin(self, epoch: str | None, event_id: int) -> None:
        """Subscribers on their own that now stand where those in step stand join them."""
        if not self.in_step:
            # No one is in step: the place is this message's, and whoever took it stands there.
            self.epoch, self.last_id = epoch, event_id
        for position in list(self.on_their_own.values()):  # values, not items: no tuple per subscriber
            if position.held is None and position.last_id == self.last_id and position.epoch == self.epoch:
                del self.on_their_own[position.connection]
                self.in_step[position.connection] = position
