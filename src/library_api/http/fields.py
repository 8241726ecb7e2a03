"""Field types shared by request bodies, where JSON's types must be taken at their word.

Pydantic's lax mode reads ``false`` as the integer 0 and ``0`` as ``False``; JSON Schema, and therefore the
OpenAPI document, says a boolean is not an integer. :data:`WholeNumber` refuses booleans where a number is
expected (while still taking ``3.0``, which JSON Schema counts as an integer).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is expected, not true or false")
    return value


WholeNumber = Annotated[int, BeforeValidator(_not_a_boolean)]
"""An integer in a request body: ``true`` and ``false`` are refused."""
