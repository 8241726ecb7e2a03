"""Uvicorn that lets the application drain before the server shuts down, alone or as several workers.

On SIGTERM, plain Uvicorn closes every WebSocket at once with 1012 and then re-raises the signal, so the
process dies by it instead of exiting 0. :class:`DrainingServer` hands the first SIGTERM/SIGINT to the
application's :class:`~library_api.server.shutdown.ShutdownCoordinator` instead; only when the drain has
finished does Uvicorn's own shutdown run (stop accepting, finish in-flight HTTP, lifespan). A second SIGINT
forces the drain to end at once. Signal handlers only record the signal; the work happens on the event loop
in :meth:`DrainingServer.on_tick`.

Uvicorn's own multi-process supervisor always runs its stock server class in the children, so
:class:`WorkerSupervisor` runs ``--workers N`` itself: it binds the socket once, starts N spawned children
that each run a :class:`DrainingServer`, forwards every stop signal to them, replaces a child that dies while
serving, and waits for all of them to finish draining before it exits.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn

from library_api.server.shutdown import ShutdownCoordinator

logger = logging.getLogger("library_api.server")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STARTUP_FAILURE = 3
"""Exit code of a worker that could not start serving (the same code Uvicorn uses)."""


def coordinator_of(app: Any) -> ShutdownCoordinator | None:
    """The shutdown coordinator of the service's application, looked for through any wrapping ASGI layers."""
    for _ in range(16):
        state = getattr(app, "state", None)
        context = getattr(state, "context", None)
        if context is not None:
            coordinator = getattr(context, "shutdown", None)
            return coordinator if isinstance(coordinator, ShutdownCoordinator) else None
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class DrainingServer(uvicorn.Server):
    """Uvicorn whose first stop signal drains the application before the server's own shutdown."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.received: list[int] = []
        self._drain: asyncio.Task[None] | None = None
        self._forced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Remember the signal; :meth:`on_tick` acts on it from the event loop."""
        self.received.append(sig)

    async def on_tick(self, counter: int) -> bool:
        """Start the drain on the first signal, force it on a second SIGINT, exit once it has finished."""
        if self.received and self._drain is None:
            coordinator = coordinator_of(self.config.loaded_app)
            if coordinator is None:
                self.should_exit = True
            else:
                self._drain = asyncio.create_task(coordinator.drain())
        if self._drain is not None:
            if len(self.received) > 1 and self.received[-1] == signal.SIGINT and not self._forced:
                self._forced = True
                coordinator = coordinator_of(self.config.loaded_app)
                if coordinator is not None:
                    coordinator.force()
            if self._drain.done():
                self.should_exit = True
        return await super().on_tick(counter)


def serve_worker(config: uvicorn.Config, listener: socket.socket) -> None:
    """Body of one worker process: serve on the inherited socket, exit non-zero when start-up failed."""
    server = DrainingServer(config)
    server.run(sockets=[listener])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class WorkerSupervisor:
    """Runs several :class:`DrainingServer` processes on one listening socket and stops them gracefully."""

    def __init__(self, config: uvicorn.Config, workers: int, poll_interval: float = 0.2) -> None:
        self.config = config
        self.workers = workers
        self.poll_interval = poll_interval
        self._context = multiprocessing.get_context("spawn")
        self._pending: list[int] = []
        self._stopping = False

    def _record(self, sig: int, frame: FrameType | None) -> None:
        self._pending.append(sig)

    def _start(self, listener: socket.socket) -> BaseProcess:
        process = self._context.Process(target=serve_worker, args=(self.config, listener))
        process.start()
        logger.info("started worker process %d", process.pid)
        return process

    def run(self) -> int:
        """Serve until every worker has stopped; the exit code is 0 unless a worker could not start."""
        listener = self.config.bind_socket()
        previous = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
        processes = [self._start(listener) for _ in range(self.workers)]
        exit_code = 0
        try:
            while any(process.is_alive() for process in processes):
                self._forward_signals(processes)
                for index, process in enumerate(processes):
                    if process.is_alive() or self._stopping:
                        continue
                    if process.exitcode == STARTUP_FAILURE:
                        logger.error("worker process %d failed to start; stopping", process.pid)
                        exit_code = STARTUP_FAILURE
                        self._stop(processes, signal.SIGTERM)
                        break
                    logger.warning("worker process %d died (exit code %s); replacing it", process.pid, process.exitcode)
                    processes[index] = self._start(listener)
                time.sleep(self.poll_interval)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            listener.close()
        logger.info("all worker processes stopped")
        return exit_code

    def _forward_signals(self, processes: list[BaseProcess]) -> None:
        """Pass stop signals on: the first as SIGTERM (start draining), a later SIGINT as SIGINT (force).

        Ctrl+C in a terminal reaches the workers too, as SIGINT; forwarding the first signal as SIGTERM keeps
        that from counting twice and forcing the drain at once.
        """
        while self._pending:
            sig = self._pending.pop(0)
            forwarded = signal.SIGINT if self._stopping and sig == signal.SIGINT else signal.SIGTERM
            logger.info(
                "received %s; passing %s to %d worker(s)",
                signal.Signals(sig).name,
                forwarded.name,
                sum(process.is_alive() for process in processes),
            )
            self._stop(processes, forwarded)

    def _stop(self, processes: list[BaseProcess], sig: int) -> None:
        self._stopping = True
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, sig)
