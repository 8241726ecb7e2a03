"""What the production middleware costs: ``GET /api/v1/books/{id}`` on a cache hit, three ways, in one run.

    .venv/bin/python -m benchmarks.bench_middleware [--duration 10] [--rounds 5] [--connections 64]

* **full**: the service with every middleware on (see ``benchmarks/middleware_apps.py``), access lines to a file;
* **bare stack**: the same application with no middleware at all;
* **bare FastAPI**: ``benchmarks/bare_app.py``, one route returning the very bytes the service returned.

All three run under Uvicorn (one worker, uvloop, httptools, no access log of Uvicorn's own); wrk loads them in
turn, round after round, so a noisy neighbour hurts all three alike, and the median round is reported with the
ratios. The book is in the catalogue cache after the first request, so every measured request is a cache hit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import httpx

from benchmarks._harness import ROOT, Process, free_port, median_result, start, wrk
from library_api.app import build_context
from library_api.books.schemas import BookCreate
from library_api.config import Settings
from library_api.db import migrate
from library_api.db.engine import create_database

UVICORN = ["--workers", "1", "--no-access-log", "--no-server-header", "--log-level", "warning"]
PATH = "/api/v1/books/{id}"


async def prepare(url: str) -> int:
    """Migrate a fresh SQLite database and add one book; return its id."""
    settings = Settings(database_url=url)
    database = create_database(settings)
    await migrate.upgrade(database.engine)
    context = build_context(settings, database)
    async with database.sessionmaker() as session:
        book = await context.books.create(
            session,
            BookCreate(
                isbn="978-0-13-235088-4",
                title="Clean Code: A Handbook of Agile Software Craftsmanship",
                authors=["Robert C. Martin"],
                tags=["software", "craft"],
                year=2008,
                description="Even bad code can function. But if code isn't clean, it can bring a development "
                "organization to its knees.",
                copies=3,
            ),
        )
    await database.dispose()
    return book.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="library-bench-"))
    url = f"sqlite+aiosqlite:///{workdir}/bench.db"
    book_id = asyncio.run(prepare(url))
    path = PATH.format(id=book_id)
    env = {
        "DATABASE_URL": url,
        "AUTO_MIGRATE": "false",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "BACKEND_CORS_ORIGINS": "https://library.example.org",
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_DEFAULT": "1000000000/minute",
    }
    servers: dict[str, Process] = {}
    try:
        for name in ("full", "bare_stack"):
            port = free_port()
            command = [sys.executable, "-m", "uvicorn", f"benchmarks.middleware_apps:{name}", "--factory"]
            servers[name] = start(
                [*command, "--port", str(port), *UVICORN], port, env, cwd=ROOT, log=workdir / f"{name}.log"
            )
            servers[name].wait_ready(path)
        body = httpx.get(servers["full"].base_url + path).content
        (workdir / "book.json").write_bytes(body)
        port = free_port()
        servers["bare_fastapi"] = start(
            [sys.executable, str(ROOT / "benchmarks" / "bare_app.py"), str(port), str(workdir / "book.json")], port
        )
        servers["bare_fastapi"].wait_ready(path)
        for name, server in servers.items():
            answer = httpx.get(server.base_url + path)
            assert answer.content == body, f"{name} answers different bytes"
            if name == "full":
                assert "ratelimit" in answer.headers, "the full stack must really be on"
                assert "x-request-id" in answer.headers

        runs: dict[str, list] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, server in servers.items():
                runs[name].append(wrk(server.base_url + path, connections=args.connections, duration=args.duration))
    finally:
        for server in servers.values():
            server.stop()
    results = {name: median_result(values) for name, values in runs.items()}
    access_lines = sum(1 for _ in (workdir / "full.log").open("rb"))
    report = {
        "command": " ".join([".venv/bin/python -m benchmarks.bench_middleware", *sys.argv[1:]]),
        "wrk": f"-t1 -c{args.connections} -d{int(args.duration)}s, {args.rounds} rounds, median round",
        "requests_per_second": {name: round(r.requests_per_second) for name, r in results.items()},
        "all_rounds": {name: [round(r.requests_per_second) for r in values] for name, values in runs.items()},
        "p50_ms": {name: round(r.p50_ms, 2) for name, r in results.items()},
        "p99_ms": {name: round(r.p99_ms, 2) for name, r in results.items()},
        "errors": {name: r.non_2xx + r.socket_errors for name, r in results.items()},
        "full_vs_bare_stack": round(results["full"].requests_per_second / results["bare_stack"].requests_per_second, 3),
        "full_vs_bare_fastapi": round(
            results["full"].requests_per_second / results["bare_fastapi"].requests_per_second, 3
        ),
        "access_lines_written_by_full": access_lines,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
