"""One load-client process: opens many WebSocket connections and records broadcast delivery latency.

Protocol with the coordinator (``bench_realtime``): it prints ``ready`` once every connection is open, then
``got ID`` each time broadcast ID has reached all of its connections (so the coordinator publishes the next one
only when the previous one is fully delivered), and when a line ``done`` arrives on standard input it closes
everything and prints one JSON line with the latencies (seconds from the message's ``ts`` to its receipt).

Both contenders are driven by this same client, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import time
from collections import Counter
from datetime import datetime

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


async def open_one(url: str, token: str | None, workers: Counter[str]) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    for attempt in range(20):
        try:
            client = await connect(url, additional_headers=headers, open_timeout=60, ping_interval=None, max_queue=None)
            welcome = orjson.loads(await client.recv())
            workers[str((welcome.get("data") or {}).get("worker", "-"))] += 1
            return client
        except (OSError, TimeoutError):
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

    clients: list[ClientConnection] = []
    workers: Counter[str] = Counter()
    for start in range(0, args.count, args.batch):
        names = range(start, min(start + args.batch, args.count))
        clients += await asyncio.gather(
            *(open_one(f"{args.url}/ws/{args.prefix}-{n}", args.token, workers) for n in names)
        )
    latencies: list[float] = []
    received = 0
    per_broadcast: Counter[int] = Counter()
    slowest: dict[int, float] = {}
    sent_at: dict[int, float] = {}

    async def read(client: ClientConnection) -> None:
        nonlocal received
        with contextlib.suppress(ConnectionClosed):
            async for raw in client:
                now = time.time()
                message = orjson.loads(raw)
                if message.get("type") == "broadcast":
                    received += 1
                    started = sent_at.get(message["id"])
                    if started is None:
                        started = sent_at[message["id"]] = datetime.fromisoformat(message["ts"]).timestamp()
                    latency = now - started
                    latencies.append(latency)
                    slowest[message["id"]] = max(slowest.get(message["id"], 0.0), latency)
                    per_broadcast[message["id"]] += 1
                    if per_broadcast[message["id"]] == len(clients):
                        print(f"got {message['id']}", flush=True)

    readers = [asyncio.create_task(read(client)) for client in clients]
    # The collector stays off while the broadcasts arrive: a full collection over 10,000 connections' objects
    # stops this process for 100 to 400 ms, which would be counted as delivery latency of whichever server is
    # measured. Reading a message makes no reference cycle worth collecting in the minutes a run lasts.
    gc.collect()
    gc.freeze()
    gc.disable()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
    await asyncio.gather(*readers, return_exceptions=True)
    report = {
        "received": received,
        "latencies": latencies,
        "slowest": {str(k): v for k, v in slowest.items()},
        "workers": dict(workers),
    }
    print(orjson.dumps(report).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
