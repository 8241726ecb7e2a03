"""Catalogue reads of the full service against a bare FastAPI route serving the same bytes, in one run.

    .venv/bin/python benchmarks/bench_catalogue.py [--database sqlite|postgresql] [--duration 10] [--rounds 3]

Starts ``library-api serve`` (Uvicorn, one worker, the sample catalogue) and the bare app, then drives
``GET /api/v1/books/{id}`` and ``GET /api/v1/books?limit=20`` on both with wrk (64 connections), alternating
rounds, and prints requests/s, p50 and p99 and the ratio to the bare app, with each server's CPU time per
request (read from ``/proc`` around each wrk run) and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import asyncpg
import httpx

from benchmarks._harness import ROOT, free_port, measured, median_result, start

ROUTES = {"book": "/api/v1/books/{id}", "list": "/api/v1/books?limit=20"}


async def create_postgres_database() -> str:
    name = f"library_bench_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    await connection.execute(f'CREATE DATABASE "{name}"')
    await connection.close()
    return name


async def drop_postgres_database(name: str) -> None:
    connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="library-bench-"))
    pg_name = None
    if args.database == "postgresql":
        pg_name = asyncio.run(create_postgres_database())
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}"
    else:
        url = f"sqlite+aiosqlite:///{workdir}/bench.db"
    env = {"DATABASE_URL": url, "AUTO_MIGRATE": "true", "SEED_SAMPLE_ON_EMPTY": "true", "LOG_LEVEL": "WARNING"}
    service_port, bare_port = free_port(), free_port()
    service = start(
        [sys.executable, "-m", "library_api", "serve", "--port", str(service_port)], service_port, env, cwd=workdir
    )
    bare = None
    try:
        service.wait_ready("/health/ready")
        first = httpx.get(f"{service.base_url}/api/v1/books?limit=1").json()["items"][0]["id"]
        paths = {"book": ROUTES["book"].format(id=first), "list": ROUTES["list"]}
        bodies = {}
        for name, path in paths.items():
            body = httpx.get(service.base_url + path).content
            (workdir / f"{name}.json").write_bytes(body)
            bodies[name] = body
        print(f"database={args.database} connections={args.connections} duration={args.duration}s rounds={args.rounds}")
        for name, path in paths.items():
            if bare is not None:
                bare.stop()
            bare = start(
                [
                    sys.executable,
                    str(ROOT / "benchmarks" / "bare_app.py"),
                    str(bare_port),
                    str(workdir / f"{name}.json"),
                ],
                bare_port,
            )
            bare.wait_ready(path)
            assert httpx.get(bare.base_url + path).content == bodies[name]
            ours, theirs, our_cpu, their_cpu = [], [], [], []
            for _ in range(args.rounds):
                result, cpu = measured(service, service.base_url + path, args.connections, args.duration)
                ours.append(result)
                our_cpu.append(cpu)
                result, cpu = measured(bare, bare.base_url + path, args.connections, args.duration)
                theirs.append(result)
                their_cpu.append(cpu)
            o, t = median_result(ours), median_result(theirs)
            oc, tc = statistics.median(our_cpu), statistics.median(their_cpu)
            print(
                f"GET {ROUTES[name]:<24} service {o.requests_per_second:8.0f} req/s p50 {o.p50_ms:6.2f} ms "
                f"p99 {o.p99_ms:6.2f} ms | bare {t.requests_per_second:8.0f} req/s p50 {t.p50_ms:6.2f} ms "
                f"p99 {t.p99_ms:6.2f} ms | ratio {o.requests_per_second / t.requests_per_second:.3f} "
                f"| errors {o.non_2xx + o.socket_errors} "
                f"| CPU/req service {oc:5.0f} us bare {tc:5.0f} us ratio {tc / oc:.3f}",
                flush=True,
            )
    finally:
        service.stop()
        if bare is not None:
            bare.stop()
        if pg_name:
            asyncio.run(drop_postgres_database(pg_name))


if __name__ == "__main__":
    main()
