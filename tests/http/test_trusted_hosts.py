"""Only the configured hosts are answered; probes and scrapes by IP address still work."""

from __future__ import annotations

from starlette.types import Message

from library_api.http.trusted_hosts import TrustedHostMiddleware
from tests.conftest import AppFactory
from tests.support.http import client_for


async def test_foreign_host_gets_a_400_problem(app_factory: AppFactory) -> None:
    app = await app_factory(allowed_hosts=["library.example.org", "*.library.example.org"])
    async with client_for(app) as client:
        exact = await client.get("/api/v1/books", headers={"Host": "library.example.org:8443"})
        sub = await client.get("/api/v1/books", headers={"Host": "eu.library.example.org"})
        foreign = await client.get("/api/v1/books", headers={"Host": "attacker.example"})
        suffix_trick = await client.get("/api/v1/books", headers={"Host": "evil-library.example.org"})
    assert exact.status_code == sub.status_code == 200
    assert foreign.status_code == suffix_trick.status_code == 400
    assert foreign.headers["content-type"] == "application/problem+json"
    assert foreign.json()["type"] == "urn:library-api:problem:invalid-host"


async def test_probes_and_metrics_answer_any_host(app_factory: AppFactory) -> None:
    app = await app_factory(allowed_hosts=["library.example.org"])
    async with client_for(app) as client:
        for path in ("/health", "/health/ready", "/health/startup", "/metrics"):
            response = await client.get(path, headers={"Host": "10.42.0.17:8000"})
            assert response.status_code == 200, (path, response.text)  # a healthy, started service
        assert (await client.get("/health/detailed", headers={"Host": "10.42.0.17"})).status_code == 400


async def test_star_allows_every_host(app_factory: AppFactory) -> None:
    app = await app_factory(allowed_hosts=["*"])
    async with client_for(app) as client:
        assert (await client.get("/api/v1/books", headers={"Host": "anything.example"})).status_code == 200


async def test_websocket_handshake_for_a_foreign_host_is_closed_with_1008() -> None:
    reached: list[str] = []

    async def inner(scope: dict[str, object], receive: object, send: object) -> None:
        reached.append(str(scope["path"]))

    middleware = TrustedHostMiddleware(inner, allowed_hosts=["library.example.org", "[::1]"])
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    def scope(host: bytes) -> dict[str, object]:
        return {"type": "websocket", "path": "/ws/a", "headers": [(b"host", host)]}

    await middleware(scope(b"attacker.example"), receive, send)
    await middleware(scope(b"library.example.org"), receive, send)
    await middleware(scope(b"[::1]:8000"), receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "host not allowed"}]
    assert reached == ["/ws/a", "/ws/a"]
