"""One kept-alive connection per worker process of a multi-worker server, so a test knows which worker answers.

Worker processes share one listening socket and the kernel hands each new connection to whichever worker
accepts first, so a burst of new connections can all land on one worker, and a replacement worker may take
none for a while. Instead of spreading requests by luck, a test pins a connection to each worker: it opens
connections one at a time and asks each which process serves it (``/health/detailed`` names its pid), keeping
the first connection of every worker it has not seen yet. Every request sent on a pinned connection is then
served by that worker; :func:`pinned_workers` checks on the way out that no connection moved meanwhile (a
server closes a connection idle for a few seconds, and the client would silently open another).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection

import httpx


async def worker_pid(http: httpx.AsyncClient) -> int:
    """The pid of the worker process behind this client's connection (loopback may read the detailed health)."""
    response = await http.get("/health/detailed")
    assert response.status_code in (200, 503), response.text  # 503: a busy disk; the answer still names the pid
    return int(response.json()["process"]["pid"])


@contextlib.asynccontextmanager
async def pinned_workers(
    open_client: Callable[[], httpx.AsyncClient],
    count: int,
    *,
    exclude: Collection[int] = (),
    within: float = 180,
) -> AsyncIterator[dict[int, httpx.AsyncClient]]:
    """Clients from ``open_client`` (one connection each), one per worker process, keyed by pid.

    Waits until ``count`` distinct workers that are not in ``exclude`` (killed ones, say) have answered, so a
    worker that is starting, or replacing another, is proven to serve before the test goes on.
    """
    pinned: dict[int, httpx.AsyncClient] = {}
    deadline = time.monotonic() + within
    try:
        while len(pinned) < count:
            assert time.monotonic() < deadline, f"only workers {sorted(pinned)} answered within {within} s"
            http = open_client()
            try:
                pid = await worker_pid(http)
            except httpx.TransportError:
                pid = None  # a worker going away; try again
            if pid is None or pid in pinned or pid in exclude:
                await http.aclose()
                await asyncio.sleep(0.02)  # the poll interval of a wait for the other worker, not a timing
                continue
            pinned[pid] = http
        yield pinned
        for pid, http in pinned.items():
            assert await worker_pid(http) == pid, "a pinned connection moved to another worker during the test"
    finally:
        for http in pinned.values():
            await http.aclose()


def one_connection(base_url: str, *, source: str | None = None, timeout: float = 30) -> httpx.AsyncClient:
    """A client that keeps exactly one connection open (from ``source``, a local address, when given)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=60)
    transport = httpx.AsyncHTTPTransport(local_address=source, limits=limits)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout)
