"""The yardstick: a bare FastAPI app whose only route returns fixed bytes (the service's own answer).

Run as ``python benchmarks/bare_app.py PORT BODY_FILE``; it serves ``GET /{anything}`` with the bytes of
BODY_FILE as ``application/json`` on Uvicorn, one worker, no middleware.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Response


def build(body: bytes) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/{path:path}")
    async def answer(path: str) -> Response:
        return Response(content=body, media_type="application/json")

    return app


if __name__ == "__main__":
    port, body_file = int(sys.argv[1]), Path(sys.argv[2])
    uvicorn.run(build(body_file.read_bytes()), host="127.0.0.1", port=port, log_level="warning", access_log=False)
