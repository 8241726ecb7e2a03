"""Authenticated reads of the full service against a bare FastAPI route serving the same bytes, in one run.

    .venv/bin/python -m benchmarks.bench_auth_reads [--quick] [--duration 10] [--rounds 3] [--soak 30]
                                                    [--event-loop auto|asyncio|uvloop]

What it does, in order:

1. creates a fresh PostgreSQL database on 127.0.0.1:5432 and starts ``library-api serve`` on it (Uvicorn, one
   worker, the sample catalogue, production-like defaults: access log on, rate limiting off as in development);
2. registers a reader, logs in, and books three copies, so every route has real rows to read;
3. for each of ``GET /api/v1/auth/me``, ``GET /api/v1/bookings?limit=20`` and ``GET /api/v1/bookings/{id}``
   (all with the reader's bearer token): saves the service's exact answer, starts ``benchmarks/bare_app.py``
   serving those bytes, and runs wrk at 64 connections against both, rounds alternating, median round;
4. runs each route once more at 256 connections for ``--soak`` seconds, the service and then the bare route
   (the bare figures show what the machine and wrk themselves do to the tail at that load), and reports the
   service's non-2xx answers (any 5xx or 4xx), socket errors and p99 beside the bare route's p99.

It prints one line per route and load with requests/s, p50, p99, the ratio to the bare route and the error
counts. It also prints the CPU time each server process spent per request (from ``/proc``, around the wrk
runs): on a machine shared with other work, requests/s falls with the neighbours' load, but CPU time per
request hardly does, so the CPU ratio (bare µs / service µs) is the steadier reading of the same comparison.
``--quick`` (2 s rounds, 1 round, 5 s soak) checks that everything works; the figures worth recording come
from the defaults on a quiet machine. Targets: ratio ≥ 0.25 at 64 connections; at 256 connections for
30 s, no non-2xx, no socket errors, p99 under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from benchmarks._harness import ROOT, Process, free_port, measured, median_result, start, wrk

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "benchmark-password-1"


async def create_database() -> str:
    name = f"library_bench_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(ADMIN_DSN)
    await connection.execute(f'CREATE DATABASE "{name}"')
    await connection.close()
    return name


async def drop_database(name: str) -> None:
    connection = await asyncpg.connect(ADMIN_DSN)
    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await connection.close()


def start_service(database: str, event_loop: str, workdir: Path, log_name: str) -> Process:
    """``library-api serve`` on ``database`` as the benchmarks run it: one Uvicorn worker, sample catalogue, a
    free port, long-lived access tokens and warnings only in the log."""
    env = {
        "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
        "AUTO_MIGRATE": "true",
        "SEED_SAMPLE_ON_EMPTY": "true",
        "LOG_LEVEL": "WARNING",
        "ACCESS_TOKEN_EXPIRE_MINUTES": "600",
        "EVENT_LOOP": event_loop,
    }
    port = free_port()
    command = [sys.executable, "-m", "library_api", "serve", "--port", str(port)]
    return start(command, port, env, cwd=workdir, log=workdir / log_name)


def prepare_reader(base_url: str) -> tuple[dict[str, str], int]:
    """Register a reader, log in and book three copies; the bearer header and one booking id."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.org"
        registered = http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "full_name": "B"})
        registered.raise_for_status()
        login = http.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
        login.raise_for_status()
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        books = http.get("/api/v1/books?limit=3").json()["items"]
        start_at = datetime.now(UTC) + timedelta(days=1)
        booking_id = 0
        for book in books:
            body = {
                "book_id": book["id"],
                "start": start_at.isoformat(),
                "end": (start_at + timedelta(days=2)).isoformat(),
            }
            created = http.post("/api/v1/bookings", json=body, headers=headers)
            created.raise_for_status()
            booking_id = created.json()["id"]
        return headers, booking_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk round at 64 connections")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender (the median is reported)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--soak", type=float, default=30, help="seconds of the 256-connection run per route")
    parser.add_argument("--soak-connections", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="a fast check: 2 s rounds, 1 round, 5 s soak")
    parser.add_argument(
        "--event-loop", choices=["auto", "asyncio", "uvloop"], default="auto", help="the service's EVENT_LOOP"
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.soak = 2, 1, 5

    workdir = Path(tempfile.mkdtemp(prefix="library-bench-auth-"))
    database = asyncio.run(create_database())
    service = start_service(database, args.event_loop, workdir, "service.log")
    bare_port = free_port()
    bare: Process | None = None
    try:
        service.wait_ready("/health/ready")
        headers, booking_id = prepare_reader(service.base_url)
        paths = {
            "/api/v1/auth/me": "/api/v1/auth/me",
            "/api/v1/bookings?limit=20": "/api/v1/bookings?limit=20",
            "/api/v1/bookings/{id}": f"/api/v1/bookings/{booking_id}",
        }
        print(
            f"PostgreSQL, Uvicorn 1 worker ({args.event_loop}); {args.connections} connections, "
            f"{args.duration:g} s x {args.rounds} rounds; "
            f"soak {args.soak_connections} connections for {args.soak:g} s; logs in {workdir}"
        )
        bodies: dict[str, Path] = {}
        for label, path in paths.items():
            answer = httpx.get(service.base_url + path, headers=headers)
            answer.raise_for_status()
            body_file = workdir / f"body-{uuid.uuid4().hex[:6]}.json"
            body_file.write_bytes(answer.content)
            bodies[label] = body_file
            if bare is not None:
                bare.stop()
            bare = start(
                [sys.executable, str(ROOT / "benchmarks" / "bare_app.py"), str(bare_port), str(body_file)], bare_port
            )
            bare.wait_ready(path)
            if httpx.get(bare.base_url + path).content != answer.content:
                sys.exit(f"the bare route does not serve the service's bytes for {label}")
            ours, theirs, our_cpu, their_cpu = [], [], [], []
            for _ in range(args.rounds):
                result, cpu = measured(service, service.base_url + path, args.connections, args.duration, headers)
                ours.append(result)
                our_cpu.append(cpu)
                result, cpu = measured(bare, bare.base_url + path, args.connections, args.duration, headers)
                theirs.append(result)
                their_cpu.append(cpu)
            o, t = median_result(ours), median_result(theirs)
            oc, tc = statistics.median(our_cpu), statistics.median(their_cpu)
            print(
                f"GET {label:<27} c={args.connections:<3} service {o.requests_per_second:7.0f} req/s "
                f"p50 {o.p50_ms:7.2f} ms p99 {o.p99_ms:7.2f} ms | bare {t.requests_per_second:7.0f} req/s "
                f"p50 {t.p50_ms:6.2f} ms p99 {t.p99_ms:6.2f} ms | "
                f"ratio {o.requests_per_second / t.requests_per_second:.3f}"
                f" | non-2xx {o.non_2xx} socket errors {o.socket_errors}"
                f" | CPU/req service {oc:6.0f} us bare {tc:5.0f} us ratio {tc / oc:.3f}",
                flush=True,
            )
        for label, path in paths.items():
            soak = wrk(service.base_url + path, connections=args.soak_connections, duration=args.soak, headers=headers)
            if bare is not None:
                bare.stop()
            bare = start(
                [sys.executable, str(ROOT / "benchmarks" / "bare_app.py"), str(bare_port), str(bodies[label])],
                bare_port,
            )
            bare.wait_ready(path)
            reference = wrk(
                bare.base_url + path, connections=args.soak_connections, duration=args.soak, headers=headers
            )
            print(
                f"GET {label:<27} c={args.soak_connections:<3} service {soak.requests_per_second:7.0f} req/s "
                f"p50 {soak.p50_ms:7.2f} ms p99 {soak.p99_ms:7.2f} ms | non-2xx {soak.non_2xx} "
                f"socket errors {soak.socket_errors} | bare {reference.requests_per_second:7.0f} req/s "
                f"p50 {reference.p50_ms:6.2f} ms p99 {reference.p99_ms:7.2f} ms",
                flush=True,
            )
    finally:
        service.stop()
        if bare is not None:
            bare.stop()
        asyncio.run(drop_database(database))


if __name__ == "__main__":
    main()
