"""Pages whose cost does not grow with the table: keyset cursors, capped totals and bounded offsets.

A list read used to count every match (``count(*) OVER ()``) and skip ``offset`` rows, so its cost grew with the
table. Here:

* **Cursors.** A page ends with ``next_cursor``, an opaque token (base64url of JSON: the sort and the sort key of
  the page's last row with its ``id``). The next page is the rows after that key in the same order, an index
  range read of ``limit`` rows wherever it starts. A token that does not decode, or that was made for another
  sort, is a 400 ``invalid-cursor`` problem; it is not signed, because a made-up key only selects another
  position in the same public order.
* **Totals.** The count stops at a cap (``LIST_TOTAL_CAP``): ``total`` is exact when ``total_relation`` is
  ``"eq"``, and a lower bound ("1,000+") when it is ``"gte"``.
* **Offsets.** Kept for compatibility, up to ``MAX_LIST_OFFSET``; deeper is a 400 ``offset-too-deep`` problem
  that points to the cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlunsplit

from sqlalchemy import BindParameter, ScalarSelect, Select, func, select

from library_api.problems import ProblemError

TotalRelation = Literal["eq", "gte"]
"""Whether ``total`` is the exact number of matches (``eq``) or a lower bound at the cap (``gte``)."""

CURSOR_MAX_LENGTH = 1024
"""The longest cursor accepted (a title of 500 characters, escaped, with its id fits)."""

Key = tuple[Any, ...]
"""A row's sort key: the sort column's value (when the sort has one) and its id."""


class InvalidCursor(ProblemError):
    """A ``cursor`` that this list did not hand out (malformed, or made for another sort)."""

    status, slug, title = 400, "invalid-cursor", "Invalid cursor"


class OffsetTooDeep(ProblemError):
    """An ``offset`` past ``MAX_LIST_OFFSET``: deep pages are reached with the cursor instead."""

    status, slug, title = 400, "offset-too-deep", "Offset too deep"


class OffsetWithCursor(ProblemError):
    """Both ``cursor`` and a non-zero ``offset``: a cursor already says where the page starts."""

    status, slug, title = 400, "offset-with-cursor", "Offset with cursor"


def check_window(offset: int, cursor: str | None, max_offset: int) -> None:
    """Refuse an offset deeper than ``max_offset``, or one given together with a cursor."""
    if cursor is not None and offset:
        raise OffsetWithCursor("Give either a cursor or an offset, not both: the cursor already says where to start.")
    if offset > max_offset:
        raise OffsetTooDeep(
            f"The offset may be at most {max_offset}; follow next_cursor (or the Link rel=next header) to go deeper."
        )


def encode_cursor(sort: str, key: Sequence[Any]) -> str:
    """The opaque token for the position after the row whose sort key is ``key`` in order ``sort``."""
    raw = json.dumps([sort, *key], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(token: str, sort: str, types: Sequence[type]) -> Key:
    """The sort key a cursor carries, checked against the sort and the key's types; 400 when it does not fit."""
    try:
        if len(token) > CURSOR_MAX_LENGTH:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor("The cursor is not one this list handed out.") from None
    if not isinstance(value, list) or len(value) != len(types) + 1 or value[0] != sort:
        raise InvalidCursor("The cursor belongs to another sort order or list; start again without it.")
    key: list[Any] = []
    for item, kind in zip(value[1:], types, strict=True):
        key.append(_typed(item, kind))
    return tuple(key)


def _typed(item: object, kind: type) -> Any:
    if kind is int and isinstance(item, int) and not isinstance(item, bool) and -(2**31) <= item < 2**31:
        return item
    if kind is float and isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item):
        return float(item)
    if kind is str and isinstance(item, str):
        return item
    if kind is datetime and isinstance(item, str):
        try:
            moment = datetime.fromisoformat(item)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment
    raise InvalidCursor("The cursor is not one this list handed out.")


def capped_count(matches: Select[*tuple[Any, ...]], count_limit: int | BindParameter[int]) -> ScalarSelect[int]:
    """``count(*)`` of the rows ``matches`` selects, stopping at ``count_limit`` (the cap plus one).

    An uncorrelated scalar subquery: PostgreSQL computes it once per statement (an ``InitPlan``), reading at
    most ``cap + 1`` index entries or rows whatever the size of the table.
    """
    limited = matches.limit(count_limit).subquery("capped")
    return select(func.count()).select_from(limited).correlate(None).scalar_subquery()


def total_of(counted: int, cap: int) -> tuple[int, TotalRelation]:
    """``total`` and ``total_relation`` for a count made by :func:`capped_count`."""
    return (cap, "gte") if counted > cap else (counted, "eq")


def next_url(path: str, query: str, cursor: str) -> str:
    """The request's ``path`` and ``query`` with ``cursor`` set and ``offset`` removed: where the next page is.

    A relative reference (RFC 8288 resolves it against the request's own URL): no host or scheme taken from
    the request's headers is repeated back.
    """
    pairs = [(name, value) for name, value in parse_qsl(query, keep_blank_values=True) if name not in _REPLACED]
    pairs.append(("cursor", cursor))
    return urlunsplit(("", "", path, urlencode(pairs), ""))


_REPLACED = frozenset({"cursor", "offset"})


def link_header(path: str, query: str, cursor: str | None) -> dict[str, str]:
    """The ``Link: <...>; rel="next"`` header of a page that has a next page, or no header."""
    if cursor is None:
        return {}
    return {"Link": f'<{next_url(path, query, cursor)}>; rel="next"'}


_NEXT_CURSOR = b'"next_cursor":'


def next_cursor_in(body: bytes) -> str | None:
    """The ``next_cursor`` of a serialised page, read without parsing the whole body.

    A page's JSON ends with its ``next_cursor`` field (the last field of the page models), whose value is
    ``null`` or a base64url string, which JSON never escapes.
    """
    _, found, rest = body.rpartition(_NEXT_CURSOR)
    if not found or not rest.startswith(b'"'):
        return None
    return rest[1:].partition(b'"')[0].decode("ascii")
