"""One load-client process: opens many WebSocket connections and records broadcast delivery latency.

Protocol with the coordinator (``bench_realtime``): it prints ``ready`` once every connection is open, then
``got ID`` each time broadcast ID has reached all of its connections (so the coordinator publishes the next one
only when the previous one is fully delivered), and when a line ``done`` arrives on standard input it closes
everything and prints one JSON line with the latencies (seconds from the message's ``ts`` to its receipt).

Both contenders are driven by this same client, in the same run. The client has to be much cheaper per message
than the servers it measures, or the figure is how soon the clients get through their backlog rather than how
soon the server sent: each connection is an asyncio protocol around the ``websockets`` library's Sans-I/O
``ClientProtocol`` (frames parsed where the bytes arrive, pings answered there), with no task, queue or future per
connection or per message. The collector is off while broadcasts arrive (see ``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections import Counter
from datetime import datetime
from typing import Any

import orjson
import uvloop
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri


class Tally:
    """What every connection of this process received, and the coordinator's ``got`` lines."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.received = 0
        self.latencies: list[float] = []
        self.per_broadcast: Counter[int] = Counter()
        self.slowest: dict[int, float] = {}
        self.sent_at: dict[int, float] = {}
        self.workers: Counter[str] = Counter()

    def broadcast(self, message: dict[str, Any], now: float) -> None:
        """Record one broadcast message's latency; say ``got`` when every connection has had it."""
        self.received += 1
        number = message["id"]
        started = self.sent_at.get(number)
        if started is None:
            started = self.sent_at[number] = datetime.fromisoformat(message["ts"]).timestamp()
        latency = now - started
        self.latencies.append(latency)
        if latency > self.slowest.get(number, 0.0):
            self.slowest[number] = latency
        self.per_broadcast[number] += 1
        if self.per_broadcast[number] == self.connections:
            print(f"got {number}", flush=True)


class LoadConnection(asyncio.Protocol):
    """One WebSocket connection: the handshake, the welcome message, then every broadcast into the tally."""

    def __init__(self, url: str, token: str | None, tally: Tally) -> None:
        # permessage-deflate is offered, as browsers and the library's own client do: the server decides.
        self.protocol = ClientProtocol(parse_uri(url), extensions=enable_client_permessage_deflate(None), max_size=None)
        self.token = token
        self.tally = tally
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.welcomed: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's is not a subclass)
        request = self.protocol.connect()
        if self.token:
            request.headers["Authorization"] = f"Bearer {self.token}"
        self.protocol.send_request(request)
        self.flush()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self.text(orjson.loads(event.data), now)
            elif isinstance(event, Response) and event.status_code != 101 and not self.welcomed.done():
                self.welcomed.set_exception(RuntimeError(f"handshake refused: {event.status_code}"))
        self.flush()  # pongs, and the reply to a close
        if protocol.close_expected() and self.transport is not None:
            self.transport.close()

    def text(self, message: dict[str, Any], now: float) -> None:
        if message.get("type") == "broadcast":
            self.tally.broadcast(message, now)
        elif message.get("type") == "welcome" and not self.welcomed.done():
            self.tally.workers[str((message.get("data") or {}).get("worker", "-"))] += 1
            self.welcomed.set_result(None)

    def flush(self) -> None:
        data = self.protocol.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(data))

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError("closed before the welcome message"))
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        """Start the closing handshake (the server answers; the transport closes on its reply)."""
        if self.transport is not None and not self.transport.is_closing():
            self.protocol.send_close()
            self.flush()


async def open_one(url: str, token: str | None, tally: Tally) -> LoadConnection:
    parsed = parse_uri(url)
    loop = asyncio.get_running_loop()
    for attempt in range(20):
        connection = None
        try:
            _, connection = await loop.create_connection(
                lambda: LoadConnection(url, token, tally), parsed.host, parsed.port
            )
            await asyncio.wait_for(connection.welcomed, timeout=60)
            return connection
        except (OSError, TimeoutError):
            if connection is not None and connection.transport is not None:
                connection.transport.abort()  # a handshake that timed out leaves no socket behind
            await asyncio.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not connect to {url}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="ws://host:port")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="load")
    parser.add_argument("--token")
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()

    tally = Tally(args.count)
    connections: list[LoadConnection] = []
    for start in range(0, args.count, args.batch):
        names = range(start, min(start + args.batch, args.count))
        connections += await asyncio.gather(
            *(open_one(f"{args.url}/ws/{args.prefix}-{n}", args.token, tally) for n in names)
        )
    # The collector stays off while the broadcasts arrive: a full collection over 10,000 connections' objects
    # stops this process for 100 to 400 ms, which would be counted as delivery latency of whichever server is
    # measured. Reading a message makes no reference cycle worth collecting in the minutes a run lasts.
    gc.collect()
    gc.freeze()
    gc.disable()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    for connection in connections:
        connection.close()
    await asyncio.wait([asyncio.ensure_future(c.lost) for c in connections], timeout=30)
    for connection in connections:
        if connection.transport is not None:
            connection.transport.abort()
    report = {
        "received": tally.received,
        "latencies": tally.latencies,
        "slowest": {str(k): v for k, v in tally.slowest.items()},
        "workers": dict(tally.workers),
    }
    print(orjson.dumps(report).decode(), flush=True)


if __name__ == "__main__":
    uvloop.run(main())
