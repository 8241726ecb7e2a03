"""The service's booking reads on asyncio and on uvloop, side by side, against a bare FastAPI route, in one run.

    .venv/bin/python -m benchmarks.bench_event_loops [--duration 5] [--rounds 5] [--connections 64]

Runs made minutes apart on a shared machine differ by more than the two loops do, so this script starts the
service twice on one fresh PostgreSQL database (``EVENT_LOOP=asyncio`` and ``EVENT_LOOP=uvloop``, Uvicorn, one
worker each, otherwise ``bench_auth_reads``'s settings) and the bare route once (``benchmarks/bare_app.py``
serving the service's bytes for the booking list), then alternates wrk rounds between all of them: bare, then
each route on each loop, ``--rounds`` times. It prints the median requests/s and CPU µs per request of each, and
their ratios to the bare route, for ``GET /api/v1/bookings?limit=20`` and ``GET /api/v1/bookings/{id}`` with a
reader's bearer token.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

from benchmarks._harness import ROOT, Process, free_port, start
from benchmarks.bench_auth_reads import create_database, drop_database, measured, prepare_reader, start_service

LOOPS = ("asyncio", "uvloop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per contender (the median is reported)")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="library-bench-loops-"))
    database = asyncio.run(create_database())
    processes: list[Process] = []
    try:
        services: dict[str, Process] = {}
        for loop in LOOPS:
            service = start_service(database, loop, workdir, f"service-{loop}.log")
            processes.append(service)
            service.wait_ready("/health/ready")
            services[loop] = service
        headers, booking_id = prepare_reader(services["asyncio"].base_url)
        paths = {
            "/api/v1/bookings?limit=20": "/api/v1/bookings?limit=20",
            "/api/v1/bookings/{id}": f"/api/v1/bookings/{booking_id}",
        }
        body_file = workdir / "body.json"
        answer = httpx.get(services["asyncio"].base_url + "/api/v1/bookings?limit=20", headers=headers)
        body_file.write_bytes(answer.raise_for_status().content)
        bare_port = free_port()
        command = [sys.executable, str(ROOT / "benchmarks" / "bare_app.py"), str(bare_port), str(body_file)]
        bare = start(command, bare_port)
        processes.append(bare)
        bare.wait_ready("/bare")
        print(
            f"PostgreSQL, Uvicorn 1 worker per loop; {args.connections} connections, {args.duration:g} s rounds, "
            f"{args.rounds} rounds alternating; logs in {workdir}"
        )
        contenders = [("bare route", bare, "/bare")]
        contenders += [(f"{label} {loop}", services[loop], path) for label, path in paths.items() for loop in LOOPS]
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in contenders}
        for _ in range(args.rounds):
            for name, process, path in contenders:
                result, cpu = measured(process, process.base_url + path, args.connections, args.duration, headers)
                if result.non_2xx or result.socket_errors:
                    sys.exit(f"{name}: {result.non_2xx} non-2xx answers, {result.socket_errors} socket errors")
                figures[name].append((result.requests_per_second, cpu))
        bare_rps = statistics.median(rps for rps, _ in figures["bare route"])
        bare_cpu = statistics.median(cpu for _, cpu in figures["bare route"])
        for name, runs in figures.items():
            rps = statistics.median(value for value, _ in runs)
            cpu = statistics.median(value for _, value in runs)
            print(
                f"{name:<36} {rps:7.0f} req/s ratio {rps / bare_rps:.3f} | "
                f"CPU/req {cpu:6.0f} us ratio {bare_cpu / cpu:.3f}",
                flush=True,
            )
    finally:
        for process in processes:
            process.stop()
        asyncio.run(drop_database(database))


if __name__ == "__main__":
    main()
