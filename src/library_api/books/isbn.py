"""ISBN-10 and ISBN-13 checksum validation and normalisation to ISBN-13.

Every ISBN is stored as its 13-digit form, so ``0-13-235088-2`` and ``978-0-13-235088-4`` are the same book
and uniqueness holds across both notations.
"""

from __future__ import annotations

_SEPARATORS = str.maketrans("", "", " -")


class InvalidISBN(ValueError):
    """The text is not an ISBN: wrong length, wrong characters, or a failed checksum."""


def _isbn10_valid(digits: str) -> bool:
    total = sum((10 - index) * (10 if char == "X" else int(char)) for index, char in enumerate(digits))
    return total % 11 == 0


def isbn13_check_digit(first12: str) -> str:
    """The check digit that completes twelve ISBN-13 digits."""
    total = sum(int(char) * (3 if index % 2 else 1) for index, char in enumerate(first12))
    return str((10 - total % 10) % 10)


def normalize_isbn(raw: str) -> str:
    """Return the ISBN-13 for an ISBN-10 or ISBN-13 (hyphens and spaces allowed), or raise :class:`InvalidISBN`."""
    text = raw.translate(_SEPARATORS).upper()
    if len(text) == 10:
        if not (text[:9].isdigit() and (text[9].isdigit() or text[9] == "X")):
            raise InvalidISBN("an ISBN-10 has nine digits and a final digit or X")
        if not _isbn10_valid(text):
            raise InvalidISBN("ISBN-10 checksum does not match")
        first12 = "978" + text[:9]
        return first12 + isbn13_check_digit(first12)
    if len(text) == 13:
        if not text.isdigit():
            raise InvalidISBN("an ISBN-13 has thirteen digits")
        if not text.startswith(("978", "979")):
            raise InvalidISBN("an ISBN-13 starts with 978 or 979")
        if isbn13_check_digit(text[:12]) != text[12]:
            raise InvalidISBN("ISBN-13 checksum does not match")
        return text
    raise InvalidISBN("an ISBN has 10 or 13 digits (hyphens and spaces are ignored)")
