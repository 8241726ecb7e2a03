"""A request that cannot get a pooled connection within ``DATABASE_POOL_TIMEOUT`` is a 503, never a 500 or a hang."""

from __future__ import annotations

from pathlib import Path

import httpx

from library_api.app import create_app
from library_api.dependencies.context import AppContext
from library_api.resilience.database import BUSY_RETRY_AFTER
from tests.conftest import fast_settings
from tests.support.factories import bearer, create_user, token_for


async def test_exhausted_pool_answers_503_with_retry_after(committed_url: str, tmp_path: Path) -> None:
    settings = fast_settings(
        database_url=committed_url,
        upload_dir=tmp_path,
        database_pool_size=1,
        database_max_overflow=0,
        database_pool_timeout=0.2,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        ctx: AppContext = app.state.context
        reader = await create_user(ctx)
        headers = bearer(token_for(ctx, reader))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            async with ctx.database.engine.connect() as held:  # the pool's only connection
                assert not held.closed
                for path in ("/api/v1/auth/me", "/api/v1/bookings?limit=20"):
                    ctx.accounts.forget(reader.id)
                    response = await client.get(path, headers=headers)
                    assert response.status_code == 503, response.text
                    assert response.headers["retry-after"] == str(BUSY_RETRY_AFTER)
                    assert response.headers["content-type"] == "application/problem+json"
                    assert response.json()["type"].endswith("database-busy")
                    assert "Traceback" not in response.text and "QueuePool" not in response.text
            released = await client.get("/api/v1/auth/me", headers=headers)
            assert released.status_code == 200 and released.json()["id"] == reader.id
