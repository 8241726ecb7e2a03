"""A pure ASGI request body limit answering 413 as a problem, with larger limits for chosen routes.

A declared ``Content-Length`` over the limit is refused before the application reads a byte; a body sent
without one (chunked) is counted as it streams and cut off at the limit. Cover uploads get
``MAX_UPLOAD_SIZE`` (plus room for the multipart envelope); everything else the general limit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from library_api.problems import problem_response


@dataclass(frozen=True, slots=True)
class BodyLimitRule:
    """A larger (or smaller) limit for requests of ``method`` whose path matches ``pattern``."""

    method: str
    pattern: re.Pattern[str]
    limit: int


class _TooLarge(HTTPException):
    """Raised from ``receive`` once a streamed body passes the limit; rendered by the problem handlers."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body exceeds the limit of {limit} bytes.")


class BodyLimitMiddleware:
    """Refuse request bodies over the limit that applies to the request's route."""

    def __init__(self, app: ASGIApp, default_limit: int, rules: Sequence[BodyLimitRule] = ()) -> None:
        self.app = app
        self.default_limit = default_limit
        self.rules = tuple(rules)

    def limit_for(self, method: str, path: str) -> int:
        """The byte limit for a request."""
        for rule in self.rules:
            if rule.method == method and rule.pattern.fullmatch(path):
                return rule.limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass non-HTTP scopes through; check and count the body of HTTP requests."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await self._refuse(scope, receive, send, limit)
                    return
                break

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem_response(
            413,
            "content-too-large",
            "Content too large",
            f"The request body exceeds the limit of {limit} bytes.",
            instance=scope["path"],
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
