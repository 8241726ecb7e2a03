"""CPU time per request of the application itself, in process, against the bare FastAPI route.

    .venv/bin/python -m benchmarks.bench_in_process [--path /api/v1/books/{book}] [--requests 3000] [--rounds 2]

Builds the service with ``create_app`` on a fresh SQLite file (migrated, sample catalogue, default settings),
then calls its ASGI callable in a loop with one fixed ``GET`` request, no server and no socket, and does the same
with ``benchmarks/bare_app.py`` serving the very bytes the service answered; rounds alternate, and each prints
the process CPU time per request of both. Without Uvicorn, the network and the load generator, what remains is the
application: middleware, routing, dependencies, handler and serialisation, which is where the framework's own
costs show (``{book}`` in the path stands for the id of the first book of the catalogue). Run it with
``PYTHONPATH`` pointing at another checkout's ``src`` to compare two versions of the service.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from benchmarks.bare_app import build
from library_api.app import create_app
from library_api.config import Settings


async def call(app: Any, path: str) -> list[dict[str, Any]]:
    """One ``GET path`` through ``app``; the messages it sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def per_request(app: Any, path: str, requests: int, expected: bytes) -> float:
    """CPU microseconds per request over ``requests`` calls, after a warm-up; the answer is checked."""
    for _ in range(requests // 10):
        await call(app, path)
    started = time.process_time()
    for _ in range(requests):
        await call(app, path)
    spent = time.process_time() - started
    last = await call(app, path)
    if last[0]["status"] != 200 or last[1]["body"] != expected:
        raise SystemExit(f"unexpected answer: {last}")
    return spent / requests * 1e6


async def main(path: str, requests: int, rounds: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="library-bench-in-process-"))
    os.chdir(workdir)
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{workdir}/bench.db", auto_migrate=True, seed_sample_on_empty=True
    )
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000") as http:
            first = (await http.get("/api/v1/books?limit=1")).json()["items"][0]["id"]
        path = path.replace("{book}", str(first))
        answer = await call(app, path)
        body = answer[1]["body"]
        bare = build(body)
        print(f"GET {path}, {requests} requests per round")
        for round_number in range(1, rounds + 1):
            ours = await per_request(app, path, requests, body)
            theirs = await per_request(bare, path, requests, body)
            ratio = theirs / ours
            print(f"round {round_number}: service {ours:6.1f} us/req | bare {theirs:6.1f} us/req | ratio {ratio:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default="/api/v1/books/{book}")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.path, arguments.requests, arguments.rounds))
