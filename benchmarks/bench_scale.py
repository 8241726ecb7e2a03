"""Every catalogue and booking list query at 1,000, 100,000 and 1,000,000 books, and wrk on the first page.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 1000,100000,1000000] [--samples 30] [--keep]
                                               [--wrk-duration 10] [--no-wrk]

For each size, builds (or, with ``--keep``, reuses) a PostgreSQL database ``library_scale_<size>`` on
127.0.0.1:5432: the real migrations, then :func:`benchmarks.scale_data.populate` (deterministic rows written by
``generate_series``, two bookings per book). Starts ``library-api serve`` on it (one Uvicorn worker, the catalogue
cache off, so that every request reads the database), and times each list query sequentially: p50 and p90 over
``--samples`` requests after three warm-up requests. Then wrk (``-t2 -c32``) on ``GET /api/v1/books?limit=20``.
Finally prints, per query, the ratio of the largest size's p50 to the smallest's, and the wrk req/s ratio.

Databases are dropped at the end unless ``--keep`` is given (then a later run reuses them: building 1M books
takes minutes). The load average is printed with every table, since other work on the machine moves figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from benchmarks._harness import free_port, start, wrk
from benchmarks.scale_data import populate

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "scale-bench-password-1"

CATALOGUE = {
    "first page": "limit=20",
    "tag=fiction": "tag=fiction&limit=20",
    "available=true": "available=true&limit=20",
    "available=false": "available=false&limit=20",
    "q=history": "q=history&limit=20",
    "q=history cursor": "CURSOR q=history",
    "q=history sort=title": "q=history&sort=title&limit=20",
    "q=river night": "q=river%20night&limit=20",
    'q="history river"': "q=%22history%20river%22&limit=20",
    "q=histroy (typo)": "q=histroy&limit=20",
    "q=histo (partial)": "q=histo&limit=20",
    "author": "author=greta%20adler&limit=20",
    "sort=title": "sort=title&limit=20",
    "sort=-title": "sort=-title&limit=20",
    "sort=year": "sort=year&limit=20",
    "sort=-year": "sort=-year&limit=20",
    "sort=-created_at": "sort=-created_at&limit=20",
    "sort=-id": "sort=-id&limit=20",
    "years 1990-1999": "year_from=1990&year_to=1999&limit=20",
    "offset=500": "limit=20&offset=500",
    "cursor (deep)": "CURSOR",
}
BOOKINGS = {
    "librarian all": "limit=20",
    "librarian status=active": "status=active&limit=20",
    "librarian book_id": "book_id=7&limit=20",
    "librarian user_id": "user_id=3&limit=20",
    "librarian cursor": "CURSOR",
}


def load() -> str:
    """The load averages, for the record next to every figure."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


async def build(size: int, keep: bool, seed: int) -> str:
    """The name of a database holding ``size`` books, built unless a kept one is there already."""
    name = f"library_scale_{size}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists and keep:
            database = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
            try:
                count = await database.fetchval("SELECT count(*) FROM books")
            finally:
                await database.close()
            if count == size:
                await migrate(name)  # a kept database gets the revisions added since it was built
                return name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    await migrate(name)
    started = time.monotonic()
    database = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
    try:
        await populate(database, size, seed)
    finally:
        await database.close()
    print(f"built {name} in {time.monotonic() - started:.1f} s ({load()})", flush=True)
    return name


async def migrate(name: str) -> None:
    """Run ``library-api migrate`` on a scale database, printing how long it took."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    started = time.monotonic()
    migrated = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "library_api", "migrate", env={**os.environ, "DATABASE_URL": url}
    )
    if await migrated.wait() != 0:
        sys.exit("migrate failed")
    print(f"migrated {name} in {time.monotonic() - started:.1f} s ({load()})", flush=True)


async def drop(name: str) -> None:
    """Drop a scale database."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def timings(client: httpx.Client, url: str, samples: int) -> tuple[float, float]:
    """p50 and p90 in milliseconds of ``samples`` sequential requests, after three warm-ups."""
    for _ in range(3):
        client.get(url).raise_for_status()
    figures = []
    for _ in range(samples):
        began = time.perf_counter()
        client.get(url).raise_for_status()
        figures.append((time.perf_counter() - began) * 1000)
    deciles = statistics.quantiles(figures, n=10)
    return statistics.median(figures), deciles[8]


def deep_cursor(client: httpx.Client, path: str, query: str = "") -> str:
    """A ``next_cursor`` from the middle of the list: the page after ``offset=500``, or after ``offset=100`` of a
    search (``query``; some 160 books match ``q=history`` at 1,000)."""
    offset = 100 if query else 500
    cursor = client.get(f"{path}?{query}&limit=20&offset={offset}".replace("?&", "?")).json()["next_cursor"]
    assert cursor, f"the list is shorter than {offset + 20} rows"
    return str(cursor)


def measure(size: int, name: str, samples: int, wrk_seconds: float | None) -> dict[str, float]:
    """The p50 of every list query at this size (printed with the p90), and wrk's req/s when asked."""
    workdir = Path(tempfile.mkdtemp(prefix="library-scale-"))
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    env = {
        "DATABASE_URL": url,
        "CACHE_ENABLED": "false",
        "RATE_LIMIT_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "false",
        "AUTO_MIGRATE": "false",
        "SEED_SAMPLE_ON_EMPTY": "false",
    }
    cli = [sys.executable, "-m", "library_api"]
    librarian = f"librarian-{size}@scale.example"
    created = subprocess.run(
        [*cli, "users", "create", "--email", librarian, "--password", PASSWORD, "--role", "librarian"],
        env={**os.environ, **env},
        capture_output=True,
        check=False,
    )
    if created.returncode != 0 and b"already" not in created.stderr + created.stdout:
        sys.exit(created.stderr.decode())
    port = free_port()
    service = start([*cli, "serve", "--port", str(port)], port, env, cwd=workdir, log=workdir / "serve.log")
    figures: dict[str, float] = {}
    try:
        service.wait_ready("/health/ready", timeout=120)
        base = service.base_url
        with httpx.Client(base_url=base, timeout=60) as client:
            login = client.post("/api/v1/auth/login", data={"username": librarian, "password": PASSWORD})
            login.raise_for_status()
            token = login.json()["access_token"]
            print(f"\n{size:,} books, {2 * size:,} bookings ({load()})")
            for label, given in CATALOGUE.items():
                query = given
                if given.startswith("CURSOR"):
                    search = given.removeprefix("CURSOR").strip()
                    cursor = deep_cursor(client, "/api/v1/books", search)
                    query = f"{search}&limit=20&cursor={cursor}".lstrip("&")
                p50, p90 = timings(client, f"/api/v1/books?{query}", samples)
                figures[label] = p50
                print(f"  GET /books {label:<22} p50 {p50:8.2f} ms  p90 {p90:8.2f} ms")
            client.headers["Authorization"] = f"Bearer {token}"
            for label, given in BOOKINGS.items():
                query = "limit=20&cursor=" + deep_cursor(client, "/api/v1/bookings") if given == "CURSOR" else given
                p50, p90 = timings(client, f"/api/v1/bookings?{query}", samples)
                figures[label] = p50
                print(f"  GET /bookings {label:<25} p50 {p50:8.2f} ms  p90 {p90:8.2f} ms")
            print(f"  ({load()})")
        if wrk_seconds:
            result = wrk(f"{base}/api/v1/books?limit=20", connections=32, duration=wrk_seconds, threads=2)
            figures["wrk"] = result.requests_per_second
            print(
                f"  wrk -t2 -c32 GET /books?limit=20: {result.requests_per_second:.0f} req/s, p50 "
                f"{result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, non-2xx {result.non_2xx}, "
                f"socket errors {result.socket_errors} ({load()})"
            )
    finally:
        service.stop()
    return figures


def main() -> None:
    """Build, measure and compare every size."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the databases, and reuse kept ones")
    parser.add_argument("--wrk-duration", type=float, default=10)
    parser.add_argument("--no-wrk", action="store_true")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    results: dict[int, dict[str, float]] = {}
    names = []
    try:
        for size in sizes:
            name = asyncio.run(build(size, args.keep, args.seed))
            names.append(name)
            results[size] = measure(size, name, args.samples, None if args.no_wrk else args.wrk_duration)
    finally:
        if not args.keep:
            for name in names:
                asyncio.run(drop(name))
    small, large = min(sizes), max(sizes)
    if small == large:
        return
    print(f"\np50 at {large:,} / p50 at {small:,} (target: at most 3x; wrk: at least 0.5x)")
    for label, value in results[large].items():
        ratio = value / results[small][label]
        verdict = ("ok" if ratio >= 0.5 else "MISSED") if label == "wrk" else ("ok" if ratio <= 3 else "MISSED")
        print(f"  {label:<30} {ratio:6.2f}x  {verdict}")


if __name__ == "__main__":
    main()
