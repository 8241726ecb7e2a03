"""Broadcast delivery latency, memory per connection and SIGTERM-to-exit: the service against a bare yardstick.

For each size N the same load client (``benchmarks/ws_load_client.py``, split over ``--procs`` processes)
opens N WebSocket connections to

* the yardstick: ``benchmarks/ws_yardstick_app.py`` on Uvicorn, a list of sockets and a loop of
  ``await ws.send_text``; and
* the service: ``library-api serve`` (authenticated connections, topics, per-connection queues and writer
  tasks), with one worker and the in-process broker, or with two workers and Redis Streams;

then publishes ``--broadcasts`` broadcasts one after another (each once the previous has reached a probe
connection opened last) and records, for every message at every client, the time from its ``ts`` (stamped
when the broadcast began) to its receipt. Memory per connection is the servers' resident-set growth divided
by N. At the end the clients leave and the server gets SIGTERM: the time to exit is recorded.
The CPU time of the servers and of the load clients during the broadcasts (per broadcast), the load average and,
with several workers, the connections each one held are reported too: on a shared machine they tell the work
done apart from the waiting for a core.

    .venv/bin/python -m benchmarks.bench_realtime --sizes 1000 5000 10000 --two-workers 10000

10,000 connections need more file descriptors than the usual default: the script raises its soft limit to the
hard limit (the children inherit it) and says so when the hard limit is too low.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import orjson
import psutil

from benchmarks._harness import ROOT, free_port

PASSWORD = "benchmark-password-1"  # a throw-away account in a throw-away database
EMAIL = "bench@example.org"


@dataclass
class Result:
    contender: str
    connections: int
    workers: int
    deflate: bool
    broadcasts: int
    delivered: int
    expected: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    kib_per_connection: float
    sigterm_to_exit_s: float
    server_cpu_ms: float
    """CPU time of every server process (user + system) per broadcast: the work, whatever the neighbours did."""
    client_cpu_ms: float
    """CPU time of the load clients per broadcast: what the same two cores also had to run."""
    load_average: float
    """The machine's one-minute load average when the broadcasts began."""
    per_worker: list[int]
    """Connections each server process held (from the welcome messages), largest first."""


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        sys.exit(f"need {needed} file descriptors, the hard limit is {hard}: raise it (ulimit -Hn) first")


def rss_bytes(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def cpu_seconds(pids: list[int], *, children: bool) -> float:
    """User + system CPU time of the processes ``pids`` (and their children when asked), so far."""
    total = 0.0
    for pid in pids:
        process = psutil.Process(pid)
        for p in [process, *(process.children(recursive=True) if children else [])]:
            times = p.cpu_times()
            total += times.user + times.system
    return total


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


class Server:
    """One contender's server process."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, health: str) -> None:
        self.port = port
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_http(f"http://127.0.0.1:{port}{health}")
        time.sleep(1.0)  # let every worker finish starting before the baseline

    def sigterm_to_exit(self) -> float:
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return float("nan")
        return time.monotonic() - started


def service_environment(directory: Path, workers: int, deflate: bool, redis_url: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "LIBRARY_API_OVERRIDES"}}
    env.update(
        {
            "DATABASE_URL": f"sqlite+aiosqlite:///{directory}/bench.db",
            "SECRET_KEY": uuid.uuid4().hex * 2,
            "PASSWORD_HASH_TIME_COST": "1",
            "PASSWORD_HASH_MEMORY_KIB": "1024",
            "PASSWORD_HASH_PARALLELISM": "1",
            "SEED_SAMPLE_ON_EMPTY": "false",
            "BROADCAST_INTERVAL": "0",
            "LOG_LEVEL": "WARNING",
            "WS_PER_MESSAGE_DEFLATE": "true" if deflate else "false",
            "WS_MAX_CONNECTIONS_PER_PRINCIPAL": "1000000",  # every benchmark connection uses one token
            "UPLOAD_DIR": str(directory / "uploads"),
            "WORKERS": str(workers),
        }
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
        env["REALTIME_REDIS_PREFIX"] = f"bench-{uuid.uuid4().hex[:8]}"
    return env


def start_service(directory: Path, workers: int, deflate: bool, redis_url: str | None) -> tuple[Server, str]:
    env = service_environment(directory, workers, deflate, redis_url)
    cli = [sys.executable, "-m", "library_api"]
    subprocess.run([*cli, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    subprocess.run(
        [*cli, "users", "create", "--email", EMAIL, "--role", "librarian", "--password", PASSWORD],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = Server([*cli, "serve", "--port", str(port)], env, port, "/health")
    response = httpx.post(
        f"http://127.0.0.1:{port}/api/v1/auth/login", data={"username": EMAIL, "password": PASSWORD}, timeout=30
    )
    response.raise_for_status()
    return server, str(response.json()["access_token"])


def start_yardstick(deflate: bool) -> Server:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "benchmarks.ws_yardstick_app:app", "--port", str(port),
        "--log-level", "warning", "--ws-per-message-deflate", "true" if deflate else "false",
    ]  # fmt: skip
    return Server(command, dict(os.environ), port, "/health")


async def start_clients(port: int, size: int, procs: int, token: str | None) -> list[asyncio.subprocess.Process]:
    clients = []
    share = -(-size // procs)
    for index in range(procs):
        count = min(share, size - index * share)
        if count <= 0:
            break
        args = ["--url", f"ws://127.0.0.1:{port}", "--count", str(count), "--prefix", f"p{index}"]
        if token:
            args += ["--token", token]
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.ws_load_client", *args,
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        clients.append(client)
    for client in clients:
        assert client.stdout is not None
        line = await asyncio.wait_for(client.stdout.readline(), timeout=900)
        if line.strip() != b"ready":
            raise RuntimeError(f"load client failed: {line!r}")
    return clients


async def finish_clients(clients: list[asyncio.subprocess.Process]) -> tuple[int, list[float], list[int]]:
    received, latencies = 0, []
    slowest: dict[str, float] = {}
    workers: dict[str, int] = {}
    for client in clients:
        assert client.stdin is not None
        client.stdin.write(b"done\n")
        await client.stdin.drain()
    for client in clients:
        out, _ = await asyncio.wait_for(client.communicate(), timeout=300)
        report = orjson.loads(out.strip().splitlines()[-1])
        received += report["received"]
        latencies += report["latencies"]
        for key, value in report["slowest"].items():
            slowest[key] = max(slowest.get(key, 0.0), value)
        for key, value in report["workers"].items():
            workers[key] = workers.get(key, 0) + value
    print("   slowest delivery per broadcast (ms):", " ".join(f"{v * 1000:.0f}" for v in slowest.values()))
    return received, latencies, sorted(workers.values(), reverse=True)


async def run_broadcasts(
    port: int, token: str | None, count: int, service: bool, clients: list[asyncio.subprocess.Process]
) -> None:
    """Publish one broadcast at a time, each once every load client has reported the previous one delivered."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    path = "/api/v1/broadcast" if service else "/broadcast"
    # A connection per broadcast: a delivery that takes longer than the server's keep-alive timeout (5 s) would
    # otherwise let the next request meet the server closing the idle connection (a read error, not a result).
    # The latency is unaffected: it starts at the message's ``ts``, stamped by the server.
    limits = httpx.Limits(max_keepalive_connections=0)
    base_url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300, limits=limits) as http:
        for n in range(count):
            response = await http.post(path, json={"message": f"benchmark broadcast {n}"})
            response.raise_for_status()
            for client in clients:
                assert client.stdout is not None
                line = await asyncio.wait_for(client.stdout.readline(), timeout=300)
                if not line.startswith(b"got "):
                    raise RuntimeError(f"load client said {line!r}")
            await asyncio.sleep(0.5)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000 if ordered else float("nan")


async def scenario(
    contender: str, size: int, workers: int, deflate: bool, broadcasts: int, procs: int, redis_url: str | None
) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-rt-") as directory:
        if contender == "service":
            server, token = start_service(Path(directory), workers, deflate, redis_url)
        else:
            server, token = start_yardstick(deflate), None
        try:
            before = rss_bytes(server.process.pid)
            clients = await start_clients(server.port, size, procs, token)
            await asyncio.sleep(2)
            after = rss_bytes(server.process.pid)
            load_average = os.getloadavg()[0]
            client_pids = [client.pid for client in clients]
            server_cpu = cpu_seconds([server.process.pid], children=True)
            client_cpu = cpu_seconds(client_pids, children=False)
            await run_broadcasts(server.port, token, broadcasts, contender == "service", clients)
            server_cpu = cpu_seconds([server.process.pid], children=True) - server_cpu
            client_cpu = cpu_seconds(client_pids, children=False) - client_cpu
            received, latencies, per_worker = await finish_clients(clients)
            await asyncio.sleep(1)
            exit_time = server.sigterm_to_exit()
        finally:
            if server.process.poll() is None:
                server.process.kill()
    return Result(
        contender=contender,
        connections=size,
        workers=workers,
        deflate=deflate,
        broadcasts=broadcasts,
        delivered=received,
        expected=size * broadcasts,
        p50_ms=round(percentile(latencies, 0.5), 1),
        p99_ms=round(percentile(latencies, 0.99), 1),
        max_ms=round(max(latencies) * 1000 if latencies else float("nan"), 1),
        kib_per_connection=round((after - before) / size / 1024, 1),
        sigterm_to_exit_s=round(exit_time, 2),
        server_cpu_ms=round(server_cpu / broadcasts * 1000, 1),
        client_cpu_ms=round(client_cpu / broadcasts * 1000, 1),
        load_average=round(load_average, 1),
        per_worker=per_worker,
    )


def table(results: list[Result]) -> str:
    lines = [
        "| Contender | Conns | Workers | Deflate | Delivered | p50 | p99 | max | KiB/conn | SIGTERM→exit "
        "| server CPU/bc | clients CPU/bc | load |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.contender} | {r.connections:,} | {r.workers} | {'on' if r.deflate else 'off'} | "
            f"{r.delivered:,}/{r.expected:,} | {r.p50_ms:,.1f} ms | {r.p99_ms:,.1f} ms | {r.max_ms:,.1f} ms | "
            f"{r.kib_per_connection:.1f} | {r.sigterm_to_exit_s:.2f} s | {r.server_cpu_ms:,.0f} ms | "
            f"{r.client_cpu_ms:,.0f} ms | {r.load_average:.1f} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--two-workers", type=int, nargs="*", default=[10000], help="sizes for 2 workers + Redis")
    parser.add_argument("--deflate", type=int, nargs="*", default=[1000], help="sizes to repeat with deflate on")
    parser.add_argument("--broadcasts", type=int, default=10)
    parser.add_argument("--procs", type=int, default=2, help="load-client processes")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    biggest = max([*args.sizes, *args.two_workers, *args.deflate, 1])
    raise_fd_limit(biggest + 2000)

    results: list[Result] = []
    plan: list[tuple[str, int, int, bool]] = []
    for size in args.sizes:
        plan += [("yardstick", size, 1, False), ("service", size, 1, False)]
    for size in args.two_workers:
        plan.append(("service", size, 2, False))
    for size in args.deflate:
        plan += [("yardstick", size, 1, True), ("service", size, 1, True)]
    for contender, size, workers, deflate in plan:
        redis_url = args.redis_url if workers > 1 else None
        print(f"-- {contender}: {size} connections, {workers} worker(s), deflate {deflate}", flush=True)
        result = await scenario(contender, size, workers, deflate, args.broadcasts, args.procs, redis_url)
        print(json.dumps(asdict(result)), flush=True)
        results.append(result)
    print()
    print(table(results))
    by_key = {(r.contender, r.connections, r.workers, r.deflate): r for r in results}
    print()
    for size in args.sizes:
        ours, bare = by_key[("service", size, 1, False)], by_key[("yardstick", size, 1, False)]
        print(f"p99 ratio at {size:,} connections (service / yardstick): {ours.p99_ms / bare.p99_ms:.2f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    asyncio.run(main())
