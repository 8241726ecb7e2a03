"""Live events over WebSocket: topics, the connection hub, the broker that fans events out, the ``/ws`` route.

Domain events (a book created, a booking cancelled) reach the :class:`~library_api.realtime.hub.Hub` through the
:class:`~library_api.events.EventBus`; the hub publishes them on a broker (in-process, or Redis Streams across
workers and hosts), which numbers them per topic and keeps a bounded history; every worker's hub then hands
each message to the connections subscribed to its topic, through one bounded queue and writer task per
connection. See ``docs/realtime.md`` for the protocol.
"""
