"""OpenAPI links are written from the routers' declarations and name operations that exist."""

from __future__ import annotations

import pytest

from library_api.http.links import Link, add_links
from tests.conftest import AppFactory


async def test_the_document_links_creations_to_what_follows(app_factory: AppFactory) -> None:
    app = await app_factory()
    schema = app.openapi()
    operation_ids = {
        operation["operationId"] for path_item in schema["paths"].values() for operation in path_item.values()
    }
    created_book = schema["paths"]["/api/v1/books"]["post"]["responses"]["201"]["links"]
    assert created_book["GetBook"]["parameters"] == {"book_id": "$response.body#/id"}
    assert created_book["BookIt"]["requestBody"] == {"book_id": "$response.body#/id"}
    created_booking = schema["paths"]["/api/v1/bookings"]["post"]["responses"]["201"]["links"]
    assert set(created_booking) == {"GetBooking", "CancelBooking", "ReturnBooking"}
    login = schema["paths"]["/api/v1/auth/login"]["post"]["responses"]["200"]["links"]
    assert login["RefreshAfterLogin"]["requestBody"] == {"refresh_token": "$response.body#/refresh_token"}
    every_link = [
        link
        for path_item in schema["paths"].values()
        for operation in path_item.values()
        for response in operation["responses"].values()
        for link in response.get("links", {}).values()
    ]
    assert len(every_link) >= 15
    assert {link["operationId"] for link in every_link} <= operation_ids


async def test_operations_with_a_body_document_400(app_factory: AppFactory) -> None:
    schema = (await app_factory()).openapi()
    assert "400" in schema["paths"]["/api/v1/books"]["post"]["responses"]
    assert "400" not in schema["paths"]["/api/v1/books/{book_id}"]["get"]["responses"]
    assert "400" in schema["paths"]["/api/v1/books"]["get"]["responses"]  # a cursor or offset it refuses


def test_a_link_to_a_route_that_does_not_exist_is_an_error() -> None:
    schema = {"paths": {"/api/v1/books": {"post": {"operationId": "create", "responses": {}}}}}
    with pytest.raises(LookupError, match="GET /api/v1/nowhere"):
        add_links(schema, "/api/v1", [Link("Lost", ("POST", "/books"), 201, ("GET", "/nowhere"))])
    add_links(schema, "/api/v1", [Link("Self", ("POST", "/books"), 201, ("POST", "/books"))])
    assert schema["paths"]["/api/v1/books"]["post"]["responses"]["201"]["links"] == {"Self": {"operationId": "create"}}
