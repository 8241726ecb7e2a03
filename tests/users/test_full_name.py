"""A name's schema says what the code does: the pattern refuses exactly the names that are only whitespace.

The name is stored stripped, so a value of whitespace alone would be empty; the OpenAPI pattern names the
characters ``str.strip`` removes, and a client that follows the document is never refused for a reason it
does not state (a contract fuzzer sends ``"\\n"`` and the like).
"""

from __future__ import annotations

import re
import sys

import httpx
import pytest
from pydantic import TypeAdapter, ValidationError

from library_api.users.schemas import NON_BLANK, FullName, UserCreate

NAME: TypeAdapter[str] = TypeAdapter(FullName)


def accepted(value: str) -> bool:
    try:
        NAME.validate_python(value)
    except ValidationError:
        return False
    return True


def test_the_pattern_and_the_code_agree_on_every_single_character() -> None:
    disagreements = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if not 0xD800 <= code <= 0xDFFF
        and not (accepted(chr(code)) == (re.search(NON_BLANK, chr(code)) is not None) == (chr(code).strip() != ""))
    ]
    assert disagreements == []


@pytest.mark.parametrize(
    ("sent", "stored"),
    [("  Ursula Le Guin\n", "Ursula Le Guin"), ("\u200bzero-width", "\u200bzero-width"), ("x" * 200, "x" * 200)],
)
def test_a_name_is_stored_stripped(sent: str, stored: str) -> None:
    assert NAME.validate_python(sent) == stored


@pytest.mark.parametrize("sent", ["", "\n", " \t\r\n", "\x1c\x85\u3000", " " + "x" * 200])
def test_blank_or_too_long_names_are_refused(sent: str) -> None:
    assert not accepted(sent)


def test_the_openapi_schema_states_the_pattern_and_the_length() -> None:
    schema = UserCreate.model_json_schema()["properties"]["full_name"]
    assert (schema["pattern"], schema["minLength"], schema["maxLength"]) == (NON_BLANK, 1, 200)


async def test_registration_refuses_a_blank_name_as_documented(client: httpx.AsyncClient) -> None:
    body = {"email": "blank-name@example.org", "password": "correct-horse-battery", "full_name": "\n"}
    refused = await client.post("/api/v1/auth/register", json=body)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "body.full_name"
    created = await client.post("/api/v1/auth/register", json={**body, "full_name": " Named \n"})
    assert created.status_code == 201, created.text
    assert created.json()["full_name"] == "Named"
