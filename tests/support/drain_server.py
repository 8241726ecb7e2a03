"""A test-only Uvicorn that hands the first SIGTERM/SIGINT to the shutdown coordinator before its own shutdown.

This drives the drain the way the server adapters' hooks do (``server/``): the first signal starts
:meth:`ShutdownCoordinator.drain` and only when it has finished does Uvicorn run its own shutdown (stop
accepting, finish in-flight HTTP, lifespan); a second SIGINT calls :meth:`ShutdownCoordinator.force`. Signal
handlers only set flags; the work happens on the event loop in :meth:`on_tick`.

Run as ``python -m tests.support.drain_server PORT`` with the service's settings in the environment.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from types import FrameType

import uvicorn

from library_api.app import create_app
from library_api.config import load_settings
from library_api.observability.logging import configure_logging
from library_api.server.shutdown import ShutdownCoordinator


class DrainingServer(uvicorn.Server):
    """Uvicorn whose first exit signal drains the application before the server shuts down."""

    def __init__(self, config: uvicorn.Config, coordinator: ShutdownCoordinator) -> None:
        super().__init__(config)
        self.coordinator = coordinator
        self.signals: list[int] = []
        self.forced = False
        self.drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)

    async def on_tick(self, counter: int) -> bool:
        if self.signals and self.drain is None:
            self.drain = asyncio.create_task(self.coordinator.drain())
        if len(self.signals) > 1 and self.signals[-1] == signal.SIGINT and not self.forced:
            self.forced = True
            self.coordinator.force()
        if self.drain is not None and self.drain.done():
            self.should_exit = True
        return await super().on_tick(counter)


def main() -> None:
    port = int(sys.argv[1])
    settings = load_settings()
    configure_logging(settings.log_level, settings.effective_log_format)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, ws_per_message_deflate=settings.ws_per_message_deflate
    )
    DrainingServer(config, app.state.context.shutdown).run()


if __name__ == "__main__":
    main()
