"""The yardstick for live-event delivery: a bare FastAPI WebSocket endpoint and a broadcast loop.

Connections are kept in a list; ``POST /broadcast`` loops ``await ws.send_text(...)`` over them, the way the
usual tutorials (and seed 003) do it: no authentication, no topics, no queues. The message has the service's
envelope shape and size, stamped with the time the broadcast began.

Run: ``uvicorn benchmarks.ws_yardstick_app:app --ws-per-message-deflate false``
"""

from __future__ import annotations

import contextlib
import itertools
from datetime import UTC, datetime

import orjson
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()
connections: list[WebSocket] = []
sequence = itertools.count(1)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.websocket("/ws/{client_id}")
async def endpoint(websocket: WebSocket, client_id: str) -> None:
    await websocket.accept()
    await websocket.send_text(orjson.dumps({"id": None, "type": "welcome", "data": {"client_id": client_id}}).decode())
    connections.append(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        connections.remove(websocket)


@app.post("/broadcast", status_code=202)
async def broadcast(body: dict[str, str]) -> dict[str, int]:
    number = next(sequence)
    ts = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    text = orjson.dumps(
        {
            "id": number,
            "type": "broadcast",
            "topic": "broadcast",
            "ts": ts,
            "data": {"message": body.get("message", ""), "sender": "user:1"},
        }
    ).decode()
    for websocket in list(connections):
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await websocket.send_text(text)
    return {"id": number}
