"""What TLS and mutual TLS cost, as ratios to plain HTTP measured side by side in one run.

    .venv/bin/python -m benchmarks.bench_tls [--server uvicorn|hypercorn|both] [--duration 5] [--rounds 3]

For each server, three ``library-api serve`` processes run at once on the sample catalogue: plain HTTP,
HTTPS and mTLS (certificates from ``library_api.security.issuing``). One load client (wrk cannot present
client certificates) drives all three alike, alternating rounds:

* **keep-alive**: authenticated ``GET /api/v1/books/{id}`` on 32 persistent connections; over HTTP and HTTPS
  with a bearer access token, over mTLS with the client certificate alone;
* **new connections**: one request per connection (``Connection: close``), i.e. a TCP connection, or a full
  mTLS handshake with certificate verification and CRL check, per request.

The client is a small asyncio HTTP/1.1 client on raw streams, cheap enough that the server is the bottleneck;
it runs on the same machine, so the ratios, not the absolute numbers, are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks._harness import free_port, start
from library_api.security.issuing import Authority, write_certificate, write_key, write_revocation_list

CONNECTIONS = 32


def make_certificates(directory: Path) -> None:
    authority = Authority.create("Bench CA")
    authority.save(directory)
    write_revocation_list(authority, directory, [])
    for name, (certificate, key) in {
        "server": authority.issue_server(["127.0.0.1"]),
        "client": authority.issue_client("bench", ["librarian"]),
    }.items():
        write_certificate(directory / f"{name}.pem", certificate)
        write_key(directory / f"{name}-key.pem", key)


async def one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def load(
    port: int, path: str, headers: str, context: ssl.SSLContext | None, keep_alive: bool, seconds: float
) -> float:
    connection = "keep-alive" if keep_alive else "close"
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n{headers}\r\n".encode()
    deadline = time.monotonic() + seconds
    done = 0
    failures = 0

    async def worker() -> None:
        nonlocal done, failures
        streams = None
        while time.monotonic() < deadline:
            if streams is None:
                streams = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            status = await one_request(*streams, request)
            if status == 200:
                done += 1
            else:
                failures += 1
            if not keep_alive:
                streams[1].close()
                streams = None
        if streams is not None:
            streams[1].close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    if failures:
        raise RuntimeError(f"{failures} requests to {path} failed")
    return done / (time.monotonic() - started)


def bench_server(server: str, duration: float, rounds: int) -> dict[str, dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix="library-bench-tls-"))
    certs = work / "certs"
    make_certificates(certs)
    env = {"AUTO_MIGRATE": "true", "SEED_SAMPLE_ON_EMPTY": "true", "LOG_LEVEL": "WARNING", "ACCESS_LOG": "false"}
    modes = {
        "http": (),
        "https": ("--mode", "https", "--cert", str(certs / "server.pem"), "--key", str(certs / "server-key.pem")),
        "mtls": (
            "--cert", str(certs / "server.pem"), "--key", str(certs / "server-key.pem"),
            "--ca", str(certs / "ca.pem"), "--crl", str(certs / "crl.pem"),
        ),
    }  # fmt: skip
    client_tls = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    mutual_tls = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    mutual_tls.load_cert_chain(str(certs / "client.pem"), str(certs / "client-key.pem"))
    contexts = {"http": None, "https": client_tls, "mtls": mutual_tls}
    processes, ports = {}, {}
    for mode, args in modes.items():
        ports[mode] = free_port()
        (work / mode).mkdir()
        command = [sys.executable, "-m", "library_api", "serve", "--port", str(ports[mode]), "--server", server]
        mode_env = {**env, "DATABASE_URL": f"sqlite+aiosqlite:///{work / mode}/bench.db"}
        processes[mode] = start([*command, *args], ports[mode], mode_env, cwd=work / mode)
    try:
        headers: dict[str, str] = {}
        book_id = 0
        for mode, process in processes.items():
            scheme = "http" if mode == "http" else "https"
            base = f"{scheme}://127.0.0.1:{ports[mode]}"
            verify: ssl.SSLContext | bool = contexts[mode] or True
            with httpx.Client(base_url=base, verify=verify, timeout=10) as client:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        if client.get("/health/ready").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2)
                book_id = client.get("/api/v1/books?limit=1").json()["items"][0]["id"]
                if mode != "mtls":
                    account = {"email": "bench@example.com", "password": "bench password 1", "full_name": "Bench"}
                    client.post("/api/v1/auth/register", json=account)
                    token = client.post(
                        "/api/v1/auth/login", data={"username": account["email"], "password": account["password"]}
                    ).json()["access_token"]
                    headers[mode] = f"Authorization: Bearer {token}\r\n"
                else:
                    headers[mode] = ""
            del process
        path = f"/api/v1/books/{book_id}"
        samples: dict[str, dict[str, list[float]]] = {"keep-alive": {}, "new connections": {}}
        for _ in range(rounds):
            for kind, keep in (("keep-alive", True), ("new connections", False)):
                for mode in modes:
                    rate = asyncio.run(load(ports[mode], path, headers[mode], contexts[mode], keep, duration))
                    samples[kind].setdefault(mode, []).append(rate)
        return {
            kind: {mode: statistics.median(values) for mode, values in by_mode.items()}
            for kind, by_mode in samples.items()
        }
    finally:
        for process in processes.values():
            process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["uvicorn", "hypercorn", "both"], default="both")
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    servers = ["uvicorn", "hypercorn"] if args.server == "both" else [args.server]
    print("| server | load | HTTP req/s | HTTPS req/s (ratio) | mTLS req/s (ratio) |")
    print("|---|---|---:|---:|---:|")
    for server in servers:
        results = bench_server(server, args.duration, args.rounds)
        for kind, rates in results.items():
            plain = rates["http"]
            print(
                f"| {server} | {kind} | {plain:.0f} | {rates['https']:.0f} ({rates['https'] / plain:.0%}) "
                f"| {rates['mtls']:.0f} ({rates['mtls'] / plain:.0%}) |"
            )


if __name__ == "__main__":
    main()
