"""Shared pieces of the benchmark scripts: free ports, server processes, wrk runs and their parsing.

Every benchmark compares against a yardstick measured in the same run, rounds alternating between the
contenders so that a noisy neighbour hurts both alike; the figure reported is the median round.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    base_url: str

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited with {self.popen.returncode}")
            try:
                if httpx.get(self.base_url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.base_url}{path} not ready in {timeout} s")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start(
    command: Sequence[str],
    port: int,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
) -> Process:
    environment = {**os.environ, **(env or {})}
    environment.pop("LIBRARY_API_OVERRIDES", None)
    output = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        popen = subprocess.Popen(list(command), env=environment, cwd=cwd, stdout=output, stderr=output)
    finally:
        if log is not None:
            output.close()  # type: ignore[union-attr]
    return Process(popen=popen, base_url=f"http://127.0.0.1:{port}")


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    url: str, *, connections: int, duration: float, threads: int = 1, headers: Mapping[str, str] | None = None
) -> WrkResult:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s", "--latency", "--timeout", "5s"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE).group(1))  # type: ignore[union-attr]
    non_2xx_match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors_match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = sum(int(x) for x in errors_match.groups()) if errors_match else 0
    return WrkResult(rps, p50, p99, int(non_2xx_match.group(1)) if non_2xx_match else 0, errors)


def median_result(results: Sequence[WrkResult]) -> WrkResult:
    return WrkResult(
        statistics.median(r.requests_per_second for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.non_2xx for r in results),
        sum(r.socket_errors for r in results),
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(
    process: Process, url: str, connections: int, duration: float, headers: Mapping[str, str] | None = None
) -> tuple[WrkResult, float]:
    """A wrk run and the server's CPU microseconds per request during it.

    On a machine shared with other work requests/s falls with the neighbours' load, CPU time per request much
    less so: the CPU ratio (bare µs / service µs) is the steadier reading of the same comparison.
    """
    before = cpu_seconds(process.popen.pid)
    result = wrk(url, connections=connections, duration=duration, headers=headers)
    spent = cpu_seconds(process.popen.pid) - before
    requests = max(1.0, result.requests_per_second * duration)
    return result, spent / requests * 1e6
