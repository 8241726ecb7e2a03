"""Retries with exponential backoff and full jitter, for failures that the next attempt may not see.

Full jitter (a random delay between zero and the exponential bound) spreads the retries of many clients that
failed together, so a dependency coming back is not hit by all of them at the same instant.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

logger = logging.getLogger("library_api.resilience")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays growing as ``base * 2**attempt`` up to ``cap``, each drawn uniformly from ``[0, bound]``."""

    base: float
    cap: float

    def delay(self, attempt: int) -> float:
        """The pause before retry number ``attempt`` (0 for the first retry)."""
        bound = min(self.cap, self.base * 2**attempt)
        return random.uniform(0, bound)  # noqa: S311 - jitter, not cryptography


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    backoff: Backoff,
    retry_on: Callable[[BaseException], bool],
    description: str,
) -> T:
    """Run ``operation`` up to ``attempts`` times while it fails with an error ``retry_on`` accepts."""
    attempt = 0
    while True:
        try:
            return await operation()
        except Exception as exc:
            attempt += 1
            if attempt >= attempts or not retry_on(exc):
                raise
            pause = backoff.delay(attempt - 1)
            logger.warning(
                "%s failed (%s); attempt %d of %d, retrying in %.3f s",
                description,
                type(exc).__name__,
                attempt,
                attempts,
                pause,
            )
            await asyncio.sleep(pause)
