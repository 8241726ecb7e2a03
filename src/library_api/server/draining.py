"""Several draining Uvicorn workers on one socket: the Uvicorn adapter's ``--workers N``.

Uvicorn's own multi-process supervisor always runs its stock server class in the children, and that class
closes every WebSocket at once with 1012 on SIGTERM. :class:`WorkerSupervisor` runs ``--workers N`` itself:
it binds the socket once (or takes the one handed down with ``serve --fd``), starts N spawned children that each run a
:class:`~library_api.server.uvicorn.DrainingServer`, forwards every stop signal to them, replaces a child that
dies while serving, and waits for all of them to finish draining before it exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn

from library_api.server.uvicorn import DrainingServer

logger = logging.getLogger("library_api.server")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STARTUP_FAILURE = 3
"""Exit code of a worker that could not start serving (the same code Uvicorn uses)."""


def serve_worker(config: uvicorn.Config, listener: socket.socket) -> None:
    """Body of one worker process: serve on the inherited socket, exit non-zero when start-up failed."""
    server = DrainingServer(config)
    server.run(sockets=[listener])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class WorkerSupervisor:
    """Runs several :class:`DrainingServer` processes on one listening socket and stops them gracefully.

    ``listener``, when given, is a socket the parent handed down (``serve --fd``); it is served on instead of
    binding ``HOST:PORT``, and, like a bound one, closed in this process on the first stop signal.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        workers: int,
        poll_interval: float = 0.2,
        *,
        listener: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.workers = workers
        self.poll_interval = poll_interval
        self._context = multiprocessing.get_context("spawn")
        self._pending: list[int] = []
        self._stopping = False
        self._listener: socket.socket | None = None
        self._inherited = listener

    def _record(self, sig: int, frame: FrameType | None) -> None:
        self._pending.append(sig)

    def _start(self, listener: socket.socket) -> BaseProcess:
        process = self._context.Process(target=serve_worker, args=(self.config, listener))
        process.start()
        logger.info("started worker process %d", process.pid)
        return process

    def run(self) -> int:
        """Serve until every worker has stopped; the exit code is 0 unless a worker could not start."""
        listener = self._listener = self._inherited if self._inherited is not None else self.config.bind_socket()
        previous = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
        processes = [self._start(listener) for _ in range(self.workers)]
        exit_code = 0
        try:
            while True:
                self._forward_signals(processes)
                if self._stopping and not any(process.is_alive() for process in processes):
                    break
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
        """Signal the workers, and let go of this process's copy of the listening socket.

        The workers hold copies of their own, closed as each one stops accepting. Were the supervisor to keep
        its copy until the end, the socket would go on listening after the last worker stopped accepting: the
        kernel would complete the handshakes of newcomers and queue their requests, which nobody reads and
        which are reset when the supervisor exits, instead of being refused at once.
        """
        self._stopping = True
        if self._listener is not None:
            self._listener.close()
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, sig)
